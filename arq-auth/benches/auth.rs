//! Benchmarks of arq-auth (filled in with the verification benchmarks).

fn main() {}
