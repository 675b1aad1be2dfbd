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

/// The longest queue name accepted (arq-queue allows 200 bytes; a queue also gets `.wait` and
/// `.dead` siblings and may carry a per-environment prefix, and the generated code stays
/// rustfmt-clean up to this length).
pub const MAX_QUEUE_NAME_LEN: usize = 60;

/// Type names the generated worker code already uses: a queue whose message type would take one
/// of these names would not compile.
const TAKEN_TYPE_NAMES: &[&str] = &[
    "Self",
    "Job",
    "HandlerError",
    "Message",
    "Serialize",
    "Deserialize",
    "String",
    "Option",
    "Result",
    "Vec",
    "Box",
    "Some",
    "None",
    "Ok",
    "Err",
    "Clone",
    "Copy",
    "Debug",
    "Default",
    "Send",
    "Sync",
];

/// A validated queue name for a worker (`email.send`, `report-generate`): words of lowercase
/// ASCII letters and digits joined by `.`, `-` or `_`, starting with a letter, at most
/// [`MAX_QUEUE_NAME_LEN`] characters. Every such name is a valid arq-queue queue name and a
/// literal AMQP routing key (no `*` or `#`), and has a Rust identifier form for its handler
/// and a type name for its message.
///
/// # Example
/// ```
/// use arq_cli::names::QueueName;
///
/// let q: QueueName = "email.send".parse()?;
/// assert_eq!(q.ident(), "email_send");
/// assert_eq!(q.camel(), "EmailSend");
/// assert!("email.*".parse::<QueueName>().is_err());
/// # Ok::<(), arq_cli::names::QueueNameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn words(&self) -> impl Iterator<Item = &str> {
        self.0.split(['.', '-', '_'])
    }

    /// The Rust identifier form: the words joined by `_` (`email.send` → `email_send`).
    pub fn ident(&self) -> String {
        self.words().collect::<Vec<_>>().join("_")
    }

    /// The `UpperCamelCase` form, for the message type (`email.send` → `EmailSend`).
    pub fn camel(&self) -> String {
        self.words()
            .map(|w| {
                let mut chars = w.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect()
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for QueueName {
    type Err = QueueNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = || s.chars().take(60).collect::<String>();
        if s.chars().count() > MAX_QUEUE_NAME_LEN {
            return Err(QueueNameError::TooLong {
                name: name(),
                len: s.chars().count(),
            });
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(QueueNameError::BadChar {
                name: name(),
                found: c,
            });
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase())
            || s.split(['.', '-', '_']).any(str::is_empty)
        {
            return Err(QueueNameError::BadShape { name: name() });
        }
        let q = Self(s.to_owned());
        if RUST_KEYWORDS.contains(&q.ident().as_str()) {
            return Err(QueueNameError::Keyword { name: name() });
        }
        let camel = q.camel();
        if TAKEN_TYPE_NAMES.contains(&camel.as_str()) {
            return Err(QueueNameError::TakenType {
                name: name(),
                camel,
            });
        }
        Ok(q)
    }
}

/// Why a queue name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueNameError {
    /// The name is longer than [`MAX_QUEUE_NAME_LEN`].
    #[error(
        "queue {name:?} is {len} characters long; queue names are at most {MAX_QUEUE_NAME_LEN} characters"
    )]
    TooLong {
        /// The name as given (cut).
        name: String,
        /// Its length in characters.
        len: usize,
    },
    /// The name contains a character other than lowercase ASCII letters, digits, `.`, `-`, `_`.
    #[error(
        "queue {name:?} contains {found:?}; use lowercase letters and digits joined by '.', '-' or '_', e.g. \"email.send\" (topic wildcards belong in bindings, not in queue names)"
    )]
    BadChar {
        /// The name as given.
        name: String,
        /// The first offending character.
        found: char,
    },
    /// The name is empty, does not start with a letter, or has an empty word.
    #[error(
        "queue {name:?} must start with a lowercase letter and have no empty word between '.', '-' or '_', e.g. \"email.send\""
    )]
    BadShape {
        /// The name as given.
        name: String,
    },
    /// The handler's identifier would be a Rust keyword.
    #[error(
        "queue {name:?} would name its handler with a Rust keyword; choose another name, e.g. \"{name}.jobs\""
    )]
    Keyword {
        /// The name as given.
        name: String,
    },
    /// The message type's name would clash with a name the generated code uses.
    #[error(
        "queue {name:?} would name its message type `{camel}`, which the generated worker code already uses; choose another name, e.g. \"{name}.jobs\""
    )]
    TakenType {
        /// The name as given.
        name: String,
        /// The type name it would get.
        camel: String,
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
    #[test]
    fn queue_names() {
        let q: QueueName = "report-generate.v2".parse().unwrap();
        assert_eq!(q.ident(), "report_generate_v2");
        assert_eq!(q.camel(), "ReportGenerateV2");
        let cases: &[(&str, &str)] = &[
            ("", "must start with a lowercase letter"),
            ("email.*", "contains '*'"),
            ("email.#", "contains '#'"),
            ("Email", "contains 'E'"),
            ("1jobs", "must start with a lowercase letter"),
            ("email..send", "empty word"),
            ("email.", "empty word"),
            ("../x", "contains '/'"),
            ("type", "Rust keyword"),
            ("job", "`Job`"),
            ("string", "`String`"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<QueueName>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
        assert!("a".repeat(60).parse::<QueueName>().is_ok());
        assert!("a".repeat(61).parse::<QueueName>().is_err());
    }
}
