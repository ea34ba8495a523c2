//! Benchmarks of the fault mechanisms (filled in below).
fn main() {}
