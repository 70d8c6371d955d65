//! The `rocmforge` command line.
fn main() {}
