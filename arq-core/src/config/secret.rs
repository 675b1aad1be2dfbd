//! [`Secret`]: a configuration value that never shows itself in Debug output or logs.

use std::fmt;

/// A secret configuration value (a password, a Redis URL with credentials, a key).
///
/// `Debug` and `Display` print `***`; the value is only reachable through [`Secret::expose`], so
/// a `tracing::debug!(?config)` or a panic message never leaks it. It is deliberately not
/// `Serialize`.
///
/// # Example
/// ```
/// use arq_core::config::Secret;
///
/// let password = Secret::new("hunter2".to_owned());
/// assert_eq!(format!("{password:?}"), "Secret(***)");
/// assert_eq!(password.to_string(), "***");
/// assert_eq!(password.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value. Call this only where the value is used, never to log it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}
