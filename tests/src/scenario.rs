//! Fleets of real processes on a virtual LAN, and the checker on their traces.
