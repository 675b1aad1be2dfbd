//! Service and platform names: validated once, then trusted everywhere they end up (crate names,
//! Rust identifiers, directory names, Kubernetes resource names, DNS labels).

use std::fmt;

/// The longest name accepted. Kubernetes names are DNS labels (63 characters); arq appends
/// suffixes such as `-config` and `-gateway`, so names stay well short of that.
pub const MAX_NAME_LEN: usize = 40;

/// Names that would collide with something arq generates, a Rust crate every program links, or a
/// folder of the platform layout.
const RESERVED: &[&str] = &[
    "arq",
    "gateway",
    "services",
    "deploy",
    "templates",
    "target",
    "src",
    "tests",
    "config",
    "migrations",
    "policies",
    "core",
    "std",
    "alloc",
    "proc-macro",
    "test",
    "build",
    "examples",
    "benches",
    "docs",
    "scripts",
    "vendor",
];

/// Rust keywords (2024 edition, strict and reserved): a name whose identifier form is one of
/// these cannot be a crate name.
const RUST_KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen", "union",
];

/// A validated name for a service or a platform: lowercase ASCII letters, digits and single
/// hyphens, starting with a letter, at most [`MAX_NAME_LEN`] characters, not reserved.
///
/// # Example
/// ```
/// use arq_cli::names::Name;
///
/// let name: Name = "billing-api".parse()?;
/// assert_eq!(name.as_str(), "billing-api");
/// assert_eq!(name.ident(), "billing_api");
///
/// let err = "../etc".parse::<Name>().unwrap_err();
/// assert!(err.to_string().contains("path"));
/// # Ok::<(), arq_cli::names::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// The name as given (kebab-case).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Rust identifier form (`-` becomes `_`).
    pub fn ident(&self) -> String {
        self.0.replace('-', "_")
    }

    /// The `UpperCamelCase` form, for type names.
    pub fn camel(&self) -> String {
        self.0
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown = || {
            let mut head: String = s.chars().take(60).collect();
            if s.chars().count() > 60 {
                head.push('…');
            }
            head
        };
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.contains(['/', '\\']) || s == "." || s == ".." || s.starts_with('.') {
            return Err(NameError::Path { name: shown() });
        }
        if s.chars().count() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                name: shown(),
                len: s.chars().count(),
            });
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            let hint = if c.is_ascii_uppercase() || c == '_' {
                format!(" (try {:?})", s.to_ascii_lowercase().replace('_', "-"))
            } else {
                String::new()
            };
            return Err(NameError::BadChar {
                name: shown(),
                found: c,
                hint,
            });
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(NameError::BadStart { name: shown() });
        }
        if s.ends_with('-') || s.contains("--") {
            return Err(NameError::BadHyphen { name: shown() });
        }
        if RESERVED.contains(&s) {
            return Err(NameError::Reserved { name: shown() });
        }
        if RUST_KEYWORDS.contains(&s.replace('-', "_").as_str()) {
            return Err(NameError::Keyword { name: shown() });
        }
        Ok(Self(s.to_owned()))
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty; give a name such as `tasks` or `billing-api`")]
    Empty,
    /// The name contains a path separator or starts with a dot.
    #[error(
        "{name:?} looks like a path; give a bare name such as `tasks` (services are always created under services/)"
    )]
    Path {
        /// The name as given.
        name: String,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{name:?} is {len} characters long; names are at most {MAX_NAME_LEN} characters")]
    TooLong {
        /// The name as given (cut).
        name: String,
        /// Its length in characters.
        len: usize,
    },
    /// The name contains a character other than lowercase ASCII letters, digits and `-`.
    #[error("{name:?} contains {found:?}; use lowercase letters, digits and single hyphens{hint}")]
    BadChar {
        /// The name as given.
        name: String,
        /// The first offending character.
        found: char,
        /// A suggestion, when one is obvious.
        hint: String,
    },
    /// The name does not start with a letter.
    #[error("{name:?} must start with a lowercase letter")]
    BadStart {
        /// The name as given.
        name: String,
    },
    /// The name ends with a hyphen or has two in a row.
    #[error("{name:?} must not end with '-' or contain '--'")]
    BadHyphen {
        /// The name as given.
        name: String,
    },
    /// The name is reserved by arq's platform layout or by Rust.
    #[error(
        "{name:?} is reserved (it names part of the platform layout or a Rust crate); choose another name"
    )]
    Reserved {
        /// The name as given.
        name: String,
    },
    /// The name's identifier form is a Rust keyword.
    #[error(
        "{name:?} is a Rust keyword and cannot name a crate; choose another name, e.g. `{name}-svc`"
    )]
    Keyword {
        /// The name as given.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for ok in ["tasks", "billing-api", "a1", "x", "notifications-worker-2"] {
            assert_eq!(ok.parse::<Name>().unwrap().as_str(), ok);
        }
        assert_eq!("billing-api".parse::<Name>().unwrap().camel(), "BillingApi");
    }

    #[test]
    fn refuses_bad_names_with_specific_messages() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("../x", "looks like a path"),
            ("a/b", "looks like a path"),
            ("..", "looks like a path"),
            (".hidden", "looks like a path"),
            ("C:\\x", "looks like a path"),
            ("Tasks", "try \"tasks\""),
            ("my_service", "try \"my-service\""),
            ("sp ace", "contains ' '"),
            ("naïve", "contains 'ï'"),
            ("1tasks", "start with a lowercase letter"),
            ("-tasks", "start with a lowercase letter"),
            ("tasks-", "must not end with '-'"),
            ("a--b", "'--'"),
            ("gateway", "reserved"),
            ("core", "reserved"),
            ("type", "Rust keyword"),
            ("self", "Rust keyword"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<Name>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
        let long = "a".repeat(41);
        assert!(
            long.parse::<Name>()
                .unwrap_err()
                .to_string()
                .contains("41 characters")
        );
    }
}
