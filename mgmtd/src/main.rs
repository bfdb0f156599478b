//! `mgmtd`, the Flotilla management server. The command line comes with the
//! configuration and the cluster key.

fn main() {}
