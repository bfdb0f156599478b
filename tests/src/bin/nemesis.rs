//! Random faults against a live fleet (placeholder until the runtime lands).

fn main() {}
