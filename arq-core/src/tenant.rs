//! The tenant identifier shared by every arq crate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The identifier of a tenant: a UUID, parsed before it reaches SQL, a cache key or a queue.
///
/// Parsing accepts the forms a UUID is usually written in (hyphenated, simple, braced, URN), rejects
/// everything else and the nil UUID, and never panics. It displays in the canonical lowercase
/// hyphenated form, which is also what it serializes to.
///
/// # Example
/// ```
/// use arq_core::TenantId;
///
/// let tenant: TenantId = "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60".parse()?;
/// assert_eq!(tenant.to_string(), "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60");
///
/// let err = "not-a-tenant".parse::<TenantId>().unwrap_err();
/// assert!(err.to_string().contains("not a valid tenant id"));
/// # Ok::<(), arq_core::ParseTenantIdError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(Uuid);

impl TenantId {
    /// Wraps a UUID that is already known to be a tenant id, refusing the nil UUID.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, ParseTenantIdError> {
        if uuid.is_nil() {
            return Err(ParseTenantIdError::nil());
        }
        Ok(Self(uuid))
    }

    /// A fresh, time-ordered (UUID v7) tenant id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The UUID inside, by value.
    pub const fn into_uuid(self) -> Uuid {
        self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for TenantId {
    type Err = ParseTenantIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The longest accepted form is the URN (45 bytes); refusing longer input early keeps
        // attacker-sized strings out of the parser and out of error messages.
        if s.len() > 45 {
            return Err(ParseTenantIdError::malformed(s));
        }
        let uuid = Uuid::try_parse(s).map_err(|_| ParseTenantIdError::malformed(s))?;
        Self::from_uuid(uuid)
    }
}

impl TryFrom<&str> for TenantId {
    type Error = ParseTenantIdError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<TenantId> for Uuid {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl Serialize for TenantId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseTenantIdError {
    reason: String,
}

impl ParseTenantIdError {
    fn malformed(input: &str) -> Self {
        Self {
            reason: format!(
                "{} is not a valid tenant id: expected a UUID such as 0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60",
                crate::text::quoted_excerpt(input, 48)
            ),
        }
    }

    fn nil() -> Self {
        Self {
            reason: "the nil UUID (all zeros) is not a valid tenant id".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60";

    #[test]
    fn parses_and_displays_canonically() {
        let t: TenantId = GOOD.parse().unwrap();
        assert_eq!(t.to_string(), GOOD);
        let upper: TenantId = GOOD.to_uppercase().parse().unwrap();
        assert_eq!(upper, t);
        let simple: TenantId = GOOD.replace('-', "").parse().unwrap();
        assert_eq!(simple, t);
    }

    #[test]
    fn rejects_malformed_input_with_a_clear_message() {
        for bad in [
            "",
            "abc",
            "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f6",
            "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f6z",
            "' or 1=1 --",
            "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60\n",
            "🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀",
        ] {
            let err = bad.parse::<TenantId>().unwrap_err();
            assert!(
                err.to_string().contains("not a valid tenant id"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn rejects_nil_uuid() {
        let err = "00000000-0000-0000-0000-000000000000"
            .parse::<TenantId>()
            .unwrap_err();
        assert!(err.to_string().contains("nil UUID"));
        assert!(TenantId::from_uuid(Uuid::nil()).is_err());
    }

    #[test]
    fn error_message_does_not_echo_huge_input() {
        let huge = "x".repeat(100_000);
        let err = huge.parse::<TenantId>().unwrap_err();
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn serde_round_trip_and_rejection() {
        let t: TenantId = GOOD.parse().unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{GOOD}\""));
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), t);
        let err = serde_json::from_str::<TenantId>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("not a valid tenant id"));
    }

    #[test]
    fn generated_ids_are_distinct() {
        assert_ne!(TenantId::generate(), TenantId::generate());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".*") {
            let _ = s.parse::<TenantId>();
        }

        #[test]
        fn round_trips_any_non_nil_uuid(bytes in proptest::array::uniform16(proptest::num::u8::ANY)) {
            let uuid = Uuid::from_bytes(bytes);
            proptest::prop_assume!(!uuid.is_nil());
            let t = TenantId::from_uuid(uuid).unwrap();
            proptest::prop_assert_eq!(t.to_string().parse::<TenantId>().unwrap(), t);
        }
    }
}
