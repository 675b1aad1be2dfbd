//! The configuration error shared by every resilience component.

/// A resilience setting that cannot work, found when the component is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resilience setting `{what}`: {why}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting.
    pub what: &'static str,
    /// What is wrong with it and what would be accepted.
    pub why: String,
}
