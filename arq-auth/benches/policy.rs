//! Policy engine benchmarks (filled in by the policy work).

fn main() {}
