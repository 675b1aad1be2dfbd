//! Placeholder until the rate-limit benchmark lands.
fn main() {}
