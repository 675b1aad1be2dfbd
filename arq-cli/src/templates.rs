//! The templates `arq` renders: embedded in the binary from the repository's `templates/`
//! folder, and overridable file by file from a local folder (`--templates DIR`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use minijinja::{Environment, UndefinedBehavior, Value};

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../templates");

/// The version of the template set, recorded in what arq generates.
pub const TEMPLATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Embedded in the `arq` binary.
    Embedded,
    /// Read from an override folder.
    Override(PathBuf),
}

/// A set of templates by name (`service/src/main.rs.j2`, …).
#[derive(Debug)]
pub struct Templates {
    files: BTreeMap<String, (String, Origin)>,
    // Parsing every template once per plan rather than once per rendered file keeps
    // `arq new service` fast as the template set grows. Built on first use, after overrides.
    env: std::sync::OnceLock<Result<Environment<'static>, String>>,
}

impl Clone for Templates {
    fn clone(&self) -> Self {
        Self {
            files: self.files.clone(),
            env: std::sync::OnceLock::new(),
        }
    }
}

impl Templates {
    /// The templates embedded in the binary.
    pub fn embedded() -> Self {
        let mut files = BTreeMap::new();
        collect(&EMBEDDED, &mut files);
        Self {
            files,
            env: std::sync::OnceLock::new(),
        }
    }

    /// The embedded templates with every file found under `dir` replacing the embedded file of
    /// the same relative name (and adding new ones).
    pub fn with_overrides(dir: &Path) -> Result<Self, TemplateError> {
        let mut t = Self::embedded();
        if !dir.is_dir() {
            return Err(TemplateError::OverrideDir {
                path: dir.to_path_buf(),
            });
        }
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|source| TemplateError::Io {
                path: d.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| TemplateError::Io {
                    path: d.clone(),
                    source,
                })?;
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "j2") {
                    let rel = path
                        .strip_prefix(dir)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .replace('\\', "/");
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| TemplateError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    t.files.insert(rel, (text, Origin::Override(path)));
                }
            }
        }
        Ok(t)
    }

    /// Template names under `prefix/` (e.g. `service`), sorted.
    pub fn names_under(&self, prefix: &str) -> Vec<String> {
        let p = format!("{prefix}/");
        self.files
            .keys()
            .filter(|k| k.starts_with(&p))
            .cloned()
            .collect()
    }

    /// The templates that came from an override folder.
    pub fn overridden(&self) -> Vec<(&str, &Path)> {
        self.files
            .iter()
            .filter_map(|(k, (_, o))| match o {
                Origin::Override(p) => Some((k.as_str(), p.as_path())),
                Origin::Embedded => None,
            })
            .collect()
    }

    /// Every template, parsed, with strict undefined variables.
    fn environment(&self) -> Result<Environment<'static>, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| format!("template syntax: {e:#}"))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        for (k, (src, _)) in &self.files {
            env.add_template_owned(k.clone(), src.clone())
                .map_err(|e| format!("{k}: {e:#}"))?;
        }
        Ok(env)
    }

    /// Renders template `name` with `ctx`. Undefined variables are errors, not empty strings.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, TemplateError> {
        let env = self
            .env
            .get_or_init(|| self.environment())
            .as_ref()
            .map_err(|message| TemplateError::Render {
                name: name.to_owned(),
                message: message.clone(),
            })?;
        let tmpl = env.get_template(name).map_err(|e| TemplateError::Render {
            name: name.to_owned(),
            message: format!("{e:#}"),
        })?;
        tmpl.render(ctx).map_err(|e| TemplateError::Render {
            name: name.to_owned(),
            message: format!("{e:#}"),
        })
    }
}

fn collect(dir: &Dir<'static>, out: &mut BTreeMap<String, (String, Origin)>) {
    for f in dir.files() {
        let name = f.path().to_string_lossy().replace('\\', "/");
        if let Some(text) = f.contents_utf8().filter(|_| name.ends_with(".j2")) {
            out.insert(name, (text.to_owned(), Origin::Embedded));
        }
    }
    for d in dir.dirs() {
        collect(d, out);
    }
}

/// The output path for a template: the part after its set's folder, without `.j2`, with a
/// leading `dot-` on a file name turned into `.` (so `.gitignore` templates survive packaging).
pub fn output_path(template: &str, set: &str) -> String {
    let rel = template
        .strip_prefix(&format!("{set}/"))
        .unwrap_or(template)
        .trim_end_matches(".j2");
    rel.split('/')
        .map(|seg| match seg.strip_prefix("dot-") {
            Some(rest) => format!(".{rest}"),
            None => seg.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Errors loading or rendering templates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The override folder does not exist.
    #[error("template folder {} does not exist or is not a directory", path.display())]
    OverrideDir {
        /// The folder given.
        path: PathBuf,
    },
    /// Reading an override template failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A template failed to parse or render.
    #[error("template {name}: {message}")]
    Render {
        /// The template name.
        name: String,
        /// minijinja's message, with the line.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sets_exist() {
        let t = Templates::embedded();
        assert!(!t.names_under("service").is_empty());
        assert!(!t.names_under("platform").is_empty());
        assert!(t.overridden().is_empty());
    }

    #[test]
    fn output_paths() {
        assert_eq!(
            output_path("service/src/main.rs.j2", "service"),
            "src/main.rs"
        );
        assert_eq!(
            output_path("platform/dot-gitignore.j2", "platform"),
            ".gitignore"
        );
    }

    #[test]
    fn overrides_replace_by_name_and_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("service")).unwrap();
        std::fs::write(
            dir.path().join("service/README.md.j2"),
            "custom {{ service.name }}\n",
        )
        .unwrap();
        let t = Templates::with_overrides(dir.path()).unwrap();
        assert_eq!(t.overridden().len(), 1);
        let ctx = minijinja::context! { service => minijinja::context! { name => "x" } };
        assert_eq!(
            t.render("service/README.md.j2", &ctx).unwrap(),
            "custom x\n"
        );
    }

    #[test]
    fn undefined_variables_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.j2"), "{{ nope.field }}").unwrap();
        let t = Templates::with_overrides(dir.path()).unwrap();
        let err = t
            .render("bad.j2", &minijinja::context! {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.j2"), "{err}");
        assert!(Templates::with_overrides(Path::new("/nonexistent/x")).is_err());
    }
}
