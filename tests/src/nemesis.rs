//! Random faults against a live fleet (see `src/bin/nemesis.rs`).
