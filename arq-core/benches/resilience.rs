//! Resilience benchmarks (criterion); filled in by the next commit.

fn main() {}
