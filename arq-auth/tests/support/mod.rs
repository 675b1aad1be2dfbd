//! Shared test fixtures.
pub mod policy;
