//! The layers of a configuration: built-in defaults, TOML files and environment variables,
//! flattened to dotted keys that remember where each value came from.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{ConfigError, ConfigProblem};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A key in a TOML file.
    File {
        /// The file.
        path: PathBuf,
        /// The dotted key inside it.
        key: String,
    },
    /// An environment variable.
    Env {
        /// The variable's name.
        var: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("the built-in default"),
            Self::File { path, key } => write!(f, "{} (key `{key}`)", path.display()),
            Self::Env { var } => write!(f, "environment variable {var}"),
        }
    }
}

/// One leaf value and its origin.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) value: toml::Value,
    pub(crate) origin: Origin,
}

/// Loads the layers: `config/default.toml` < `config/<env>.toml` < `ARQ__SECTION__KEY` variables.
///
/// Missing files are fine (every setting has a default); unreadable files, TOML syntax errors and
/// malformed variable names are problems, and all of them are reported together.
///
/// # Example
/// ```
/// use arq_core::config::{ArqConfig, ConfigLoader};
///
/// let dir = std::env::temp_dir().join(format!("arq-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("default.toml"), "[rate_limit]\nper_minute = 100\n")?;
/// let layers = ConfigLoader::new(&dir)
///     .environment("test")
///     .vars([("ARQ__RATE_LIMIT__PER_HOUR", "2000")])
///     .load()
///     .unwrap();
/// let config = ArqConfig::from_layers(&layers).unwrap();
/// assert_eq!(config.rate_limit.per_minute, 100);
/// assert_eq!(config.rate_limit.per_hour, 2000);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    dir: PathBuf,
    environment: Option<String>,
    vars: Option<Vec<(String, String)>>,
    prefix: String,
}

/// The environment variable naming the environment (`development`, `production`, …).
pub const ENVIRONMENT_VAR: &str = "ARQ_ENV";

impl ConfigLoader {
    /// Reads files from `dir` (usually `config`).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            environment: None,
            vars: None,
            prefix: "ARQ".to_owned(),
        }
    }

    /// The environment whose file `<dir>/<env>.toml` overrides the defaults. Without this,
    /// `ARQ_ENV` is read, then `development`.
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }

    /// Uses these variables instead of the process environment (for tests and tools).
    pub fn vars<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.vars = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// The variable prefix, `ARQ` by default (variables are `<PREFIX>__SECTION__KEY`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Reads every layer. Fails with every problem found at once.
    pub fn load(&self) -> Result<Layers, ConfigError> {
        let (layers, problems) = self.load_collecting();
        if problems.is_empty() {
            Ok(layers)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// Reads every layer it can, returning the problems next to what was read, so typed
    /// validation can add its own and report them all together.
    pub(crate) fn load_collecting(&self) -> (Layers, Vec<ConfigProblem>) {
        let mut problems = Vec::new();
        let mut values = BTreeMap::new();

        let vars: Vec<(String, Result<String, ()>)> = match &self.vars {
            Some(v) => v.iter().map(|(k, v)| (k.clone(), Ok(v.clone()))).collect(),
            None => std::env::vars_os()
                .filter_map(|(k, v)| {
                    let k = k.into_string().ok()?;
                    Some((k, v.into_string().map_err(|_| ())))
                })
                .collect(),
        };
        let environment = self
            .environment
            .clone()
            .or_else(|| {
                vars.iter()
                    .find(|(k, _)| k == ENVIRONMENT_VAR)
                    .and_then(|(_, v)| v.clone().ok())
            })
            .unwrap_or_else(|| "development".to_owned());
        if environment.is_empty()
            || !environment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            problems.push(ConfigProblem::new(
                Origin::Env {
                    var: ENVIRONMENT_VAR.to_owned(),
                },
                ENVIRONMENT_VAR,
                format!(
                    "the environment name {environment:?} must be letters, digits, '-' or '_' (it names config/<env>.toml)"
                ),
            ));
        } else {
            for file in [
                self.dir.join("default.toml"),
                self.dir.join(format!("{environment}.toml")),
            ] {
                read_file(&file, &mut values, &mut problems);
            }
        }

        let marker = format!("{}__", self.prefix);
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(&marker) else {
                continue;
            };
            let origin = Origin::Env { var: name.clone() };
            let segments: Vec<&str> = rest.split("__").collect();
            if segments.len() < 2 || segments.iter().any(|s| s.is_empty()) {
                problems.push(ConfigProblem::new(
                    origin,
                    &name,
                    format!(
                        "a configuration variable is named {marker}SECTION__KEY (for example {marker}SERVER__ADDR); this one does not name both"
                    ),
                ));
                continue;
            }
            let Ok(value) = value else {
                problems.push(ConfigProblem::new(
                    origin,
                    &name,
                    "the value is not valid UTF-8",
                ));
                continue;
            };
            let key = segments
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            values.insert(
                key,
                Entry {
                    value: toml::Value::String(value),
                    origin,
                },
            );
        }

        (
            Layers {
                environment,
                values,
                consumed: Mutex::default(),
            },
            problems,
        )
    }
}

fn read_file(path: &Path, values: &mut BTreeMap<String, Entry>, problems: &mut Vec<ConfigProblem>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            problems.push(ConfigProblem::new(
                Origin::File {
                    path: path.to_path_buf(),
                    key: String::new(),
                },
                "",
                format!("cannot read the file: {e}"),
            ));
            return;
        }
    };
    match text.parse::<toml::Table>() {
        Ok(table) => flatten(path, "", table, values),
        Err(e) => problems.push(ConfigProblem::new(
            Origin::File {
                path: path.to_path_buf(),
                key: String::new(),
            },
            "",
            format!("not valid TOML: {}", e.to_string().trim_end()),
        )),
    }
}

fn flatten(path: &Path, prefix: &str, table: toml::Table, out: &mut BTreeMap<String, Entry>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(path, &key, t, out),
            leaf => {
                out.insert(
                    key.clone(),
                    Entry {
                        value: leaf,
                        origin: Origin::File {
                            path: path.to_path_buf(),
                            key,
                        },
                    },
                );
            }
        }
    }
}

/// Every configuration value after layering, by dotted key, with its origin.
///
/// [`ArqConfig::from_layers`](super::ArqConfig::from_layers) reads arq's sections; a service reads
/// its own sections with [`Layers::section`].
#[derive(Debug)]
pub struct Layers {
    environment: String,
    values: BTreeMap<String, Entry>,
    consumed: Mutex<BTreeSet<String>>,
}

impl Layers {
    pub(crate) fn empty() -> Self {
        Self {
            environment: String::new(),
            values: BTreeMap::new(),
            consumed: Mutex::default(),
        }
    }

    /// The environment whose file was read.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// Where the value of `key` came from, if it was set.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.values.get(key).map(|e| &e.origin)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        let entry = self.values.get(key)?;
        if let Ok(mut c) = self.consumed.lock() {
            c.insert(key.to_owned());
        }
        Some(entry)
    }

    /// Keys under `section.` that were set but never read: misspellings.
    pub(crate) fn unread_in(&self, section: &str) -> Vec<(&str, &Origin)> {
        let consumed = self.consumed.lock().map(|c| c.clone()).unwrap_or_default();
        let prefix = format!("{section}.");
        self.values
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && !consumed.contains(k.as_str()))
            .map(|(k, e)| (k.as_str(), &e.origin))
            .collect()
    }

    /// Deserializes the section `name` (for example a service's own `[app]` table) with serde.
    ///
    /// Values from environment variables are strings; they are read as TOML values first
    /// (`ARQ__APP__WORKERS=4` is the integer 4, `ARQ__APP__NAME=tasks` the string "tasks").
    ///
    /// # Example
    /// ```
    /// use arq_core::config::ConfigLoader;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct App { workers: u32 }
    ///
    /// let layers = ConfigLoader::new("/nonexistent")
    ///     .vars([("ARQ__APP__WORKERS", "4")])
    ///     .load()
    ///     .unwrap();
    /// let app: App = layers.section("app").unwrap();
    /// assert_eq!(app.workers, 4);
    /// ```
    pub fn section<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        let prefix = format!("{name}.");
        let mut root = toml::Table::new();
        let mut origins = Vec::new();
        for (key, entry) in self.values.range(prefix.clone()..) {
            let Some(rest) = key.strip_prefix(&prefix) else {
                break;
            };
            origins.push(entry.origin.to_string());
            let value = match (&entry.origin, &entry.value) {
                (Origin::Env { .. }, toml::Value::String(s)) => env_value(s),
                (_, v) => v.clone(),
            };
            insert_path(&mut root, rest, value);
        }
        toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                problems: vec![ConfigProblem::new(
                    Origin::Default,
                    name,
                    format!(
                        "section [{name}] (set by {}) is invalid: {}",
                        if origins.is_empty() {
                            "nothing".to_owned()
                        } else {
                            origins.join(", ")
                        },
                        e.to_string().trim_end()
                    ),
                )],
            })
    }
}

/// Reads an environment variable's text as a TOML value when it is one, else as a string.
fn env_value(s: &str) -> toml::Value {
    format!("v = {s}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_owned()))
}

fn insert_path(root: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut table = root;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_owned(), value);
            return;
        }
        let next = table
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !next.is_table() {
            *next = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = next else { return };
        table = t;
    }
}
