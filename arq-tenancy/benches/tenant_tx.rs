//! Placeholder until the tenant transaction benchmark lands.

fn main() {}
