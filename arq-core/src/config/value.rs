//! Reading one typed value from a layer, with a message that says what was expected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Secret;

/// A type a configuration value can be read as. Values from environment variables arrive as
/// text, so every implementation also accepts its text form.
pub(crate) trait FromValue: Sized {
    fn from_value(v: &toml::Value) -> Result<Self, String>;
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        other => format!("{} {other}", other.type_str()),
    }
}

impl FromValue for String {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            other => Err(format!("expected a string, found {}", describe(other))),
        }
    }
}

impl FromValue for Secret<String> {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Ok(Secret::new(s.clone())),
            // Never echo a secret's value, even a mistyped one.
            other => Err(format!("expected a string, found a {}", other.type_str())),
        }
    }
}

impl FromValue for PathBuf {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        String::from_value(v).map(PathBuf::from)
    }
}

impl FromValue for bool {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Boolean(b) => Ok(*b),
            toml::Value::String(s) if s == "true" => Ok(true),
            toml::Value::String(s) if s == "false" => Ok(false),
            other => Err(format!("expected true or false, found {}", describe(other))),
        }
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: &toml::Value) -> Result<Self, String> {
                let n: i128 = match v {
                    toml::Value::Integer(i) => i128::from(*i),
                    toml::Value::String(s) => s.trim().replace('_', "").parse().map_err(|_| {
                        format!("expected a whole number, found {}", describe(v))
                    })?,
                    other => return Err(format!("expected a whole number, found {}", describe(other))),
                };
                <$t>::try_from(n).map_err(|_| {
                    format!("{n} is out of range (from {} to {})", <$t>::MIN, <$t>::MAX)
                })
            }
        }
    )*};
}
int_value!(u16, u32, u64, usize);

impl FromValue for f64 {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        let f = match v {
            toml::Value::Float(f) => *f,
            toml::Value::Integer(i) => *i as f64,
            toml::Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("expected a number, found {}", describe(v)))?,
            other => return Err(format!("expected a number, found {}", describe(other))),
        };
        if f.is_finite() {
            Ok(f)
        } else {
            Err(format!("expected a finite number, found {f}"))
        }
    }
}

impl FromValue for SocketAddr {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        let s = String::from_value(v)?;
        s.parse().map_err(|_| {
            format!("expected an address like \"0.0.0.0:8080\" or \"[::1]:8080\", found {s:?}")
        })
    }
}

impl FromValue for Vec<String> {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| String::from_value(item).map_err(|e| format!("item {i}: {e}")))
                .collect(),
            // Lists in environment variables are comma-separated.
            toml::Value::String(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()),
            other => Err(format!(
                "expected a list of strings, found {}",
                describe(other)
            )),
        }
    }
}

/// A duration written with a unit: `250ms`, `30s`, `5m`, `1h`.
impl FromValue for Duration {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        let hint = "expected a duration with a unit, like \"250ms\", \"30s\", \"5m\" or \"1h\"";
        let toml::Value::String(s) = v else {
            return Err(format!("{hint}, found {}", describe(v)));
        };
        parse_duration(s).ok_or_else(|| format!("{hint}, found {s:?}"))
    }
}

pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// A byte size: a whole number, or one with a unit (`512KiB`, `2MiB`, `1GiB`, `10kB`, `1MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl FromValue for ByteSize {
    fn from_value(v: &toml::Value) -> Result<Self, String> {
        let hint = "expected a size in bytes, like 1048576 or \"1MiB\"";
        match v {
            toml::Value::Integer(i) => u64::try_from(*i)
                .map(ByteSize)
                .map_err(|_| format!("{hint}, found {i}")),
            toml::Value::String(s) => {
                let s = s.trim();
                let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
                let (num, unit) = s.split_at(split);
                let n: u64 = num.parse().map_err(|_| format!("{hint}, found {s:?}"))?;
                let mult: u64 = match unit.trim() {
                    "" | "B" => 1,
                    "kB" | "KB" => 1_000,
                    "KiB" => 1 << 10,
                    "MB" => 1_000_000,
                    "MiB" => 1 << 20,
                    "GB" => 1_000_000_000,
                    "GiB" => 1 << 30,
                    _ => return Err(format!("{hint}, found {s:?}")),
                };
                n.checked_mul(mult)
                    .map(ByteSize)
                    .ok_or_else(|| format!("{s:?} is too large"))
            }
            other => Err(format!("{hint}, found {}", describe(other))),
        }
    }
}
