//! # arq-cli
//!
//! The library behind the `arq` binary. As in ripgrep and sqlx-cli, the command line is parsed
//! into [`Cli`] without any I/O, generation builds a [`plan::Plan`] (every file to create or
//! change, with old and new content), and only then is anything written: `--dry-run` prints the
//! plan as a unified diff, and a file a user edited since arq generated it stops the whole plan.
//!
//! # Example
//!
//! ```
//! use arq_cli::generate::{plan_init, InitOptions};
//! use arq_cli::manifest::ArqSource;
//! use arq_cli::templates::Templates;
//!
//! let dir = tempfile::tempdir()?;
//! let opts = InitOptions { dir: dir.path().join("acme"), name: None, arq: ArqSource::default() };
//! let generated = plan_init(&opts, &Templates::embedded())?;
//! assert!(generated.plan.diff().contains("+++ b/arq.toml"));
//! generated.plan.apply(false)?;
//!
//! // Running it again changes nothing.
//! assert!(plan_init(&opts, &Templates::embedded())?.plan.is_noop());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use anstyle::{AnsiColor, Style};
use clap::{Args, Parser, Subcommand};

pub mod check;
pub mod generate;
pub mod manifest;
pub mod names;
pub mod plan;
pub mod templates;

use generate::{GenerateError, Generated, InitOptions, NewServiceOptions};
use manifest::{ArqSource, ServiceKind};
use names::Name;
use plan::Change;
use templates::Templates;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code when a check found problems.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code for usage, configuration or internal errors.
pub const EXIT_ERROR: u8 = 2;

/// The `arq` command line.
#[derive(Debug, Parser)]
#[command(
    name = "arq",
    version,
    about = "Scaffold multi-tenant Rust services and check them in CI",
    after_help = "Examples:\n  arq init acme\n  cd acme && arq new service tasks\n  arq new service billing --port 3010 --route /billing --dry-run\n  arq new service mailer --kind worker --queue email.send"
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a platform: manifest, Cargo workspace, compose file.
    #[command(
        after_help = "Examples:\n  arq init acme\n  arq init ./platforms/acme --name acme --dry-run"
    )]
    Init(InitArgs),
    /// Generate something new.
    #[command(subcommand)]
    New(NewCommand),
    /// Check a platform (or service) for problems: the CI gate.
    #[command(
        after_help = "Examples:\n  arq check\n  arq check --format sarif > arq.sarif\n  arq check --list-rules\n  arq check --explain migrations-rls-forced\n  arq check --write-baseline .arq/check-baseline.json\n  arq check --baseline .arq/check-baseline.json --fail-on warning\n  arq check --live --database-url postgres://arq_owner@127.0.0.1/acme"
    )]
    Check(CheckArgs),
    /// Print shell completions for `arq`.
    #[command(after_help = "Example:\n  arq completions bash > /etc/bash_completion.d/arq")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What `arq new` generates.
#[derive(Debug, Subcommand)]
pub enum NewCommand {
    /// Generate a service or a queue worker; inside a platform, also wire it into arq.toml, the
    /// workspace, compose.yaml, the Kubernetes manifests, CI and the alert rules.
    #[command(
        after_help = "Examples:\n  arq new service tasks\n  arq new service billing --port 3010 --route /billing\n  arq new service tasks --dry-run\n  arq new service mailer --kind worker --queue email.send --queue email.bounce"
    )]
    Service(NewServiceArgs),
}

/// Options shared by every generating command.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Print the plan as a unified diff and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite files that were edited since arq generated them.
    #[arg(long)]
    pub force: bool,
    /// Take templates from this folder where it has them (overriding the embedded ones).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

/// Where generated crates take the arq crates from.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct SourceArgs {
    /// Depend on the arq crates in this checkout (by path).
    #[arg(long, value_name = "PATH")]
    pub arq_path: Option<PathBuf>,
    /// Depend on the arq crates from this git repository.
    #[arg(long, value_name = "URL")]
    pub arq_git: Option<String>,
    /// Depend on this crates.io version of the arq crates (default: this arq's version).
    #[arg(long, value_name = "VERSION")]
    pub arq_version: Option<String>,
}

/// `arq init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to create the platform in (new or empty).
    pub dir: PathBuf,
    /// The platform's name (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where generated crates take the arq crates from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Generation options.
    #[command(flatten)]
    pub gen_args: GenArgs,
}

/// `arq new service`.
#[derive(Debug, Args)]
pub struct NewServiceArgs {
    /// The service name: lowercase letters, digits and hyphens.
    pub name: String,
    /// HTTP service, or queue worker (consumes --queue QUEUE…, serves only health and metrics,
    /// has no database).
    #[arg(long, value_enum, default_value = "http")]
    pub kind: ServiceKind,
    /// The port (default: the next free one from 3001).
    #[arg(long)]
    pub port: Option<u16>,
    /// The route prefix under the gateway prefix (default: /NAME; HTTP services only).
    #[arg(long)]
    pub route: Option<String>,
    /// A queue the worker consumes (repeatable; default: NAME.jobs; workers only).
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Generate without a database (workers never have one).
    #[arg(long)]
    pub no_db: bool,
    /// The platform to add the service to (default: the nearest arq.toml above the current
    /// directory; none found means a standalone service in ./NAME).
    #[arg(long, value_name = "DIR")]
    pub platform: Option<PathBuf>,
    /// Where a standalone service takes the arq crates from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Generation options.
    #[command(flatten)]
    pub gen_args: GenArgs,
}

/// `arq check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The platform (or service) directory (default: the nearest arq.toml above the current
    /// directory, else the current directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: check::output::Format,
    /// The lowest severity that fails the run (exit 1).
    #[arg(long, value_enum, default_value = "error")]
    pub fail_on: check::Severity,
    /// Report only findings that are not in this baseline file.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Write today's findings to this baseline file (and exit 0).
    #[arg(long, value_name = "FILE", conflicts_with = "baseline")]
    pub write_baseline: Option<PathBuf>,
    /// Also audit a live database with arq-tenancy's audit.
    #[arg(long)]
    pub live: bool,
    /// The database for --live (default: $DATABASE_URL).
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The runtime role --live audits.
    #[arg(long, value_name = "ROLE", default_value = "arq_app")]
    pub runtime_role: String,
    /// List every rule and exit.
    #[arg(long, exclusive = true)]
    pub list_rules: bool,
    /// Explain one rule and exit.
    #[arg(long, value_name = "RULE", exclusive = true)]
    pub explain: Option<String>,
}

/// A failure to report: the message, and whether it is the user's to fix (exit 2 either way).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CliError(#[from] GenerateError);

impl From<check::CheckError> for CliError {
    fn from(e: check::CheckError) -> Self {
        Self(GenerateError::Usage(e.to_string()))
    }
}

impl From<names::NameError> for CliError {
    fn from(e: names::NameError) -> Self {
        Self(GenerateError::Usage(e.to_string()))
    }
}

impl From<templates::TemplateError> for CliError {
    fn from(e: templates::TemplateError) -> Self {
        Self(GenerateError::Template(e))
    }
}

impl From<plan::PlanError> for CliError {
    fn from(e: plan::PlanError) -> Self {
        Self(GenerateError::Plan(e))
    }
}

/// Where the generated crates take arq from. A relative `--arq-path` stays relative so the
/// generated tree can be moved or committed together with the checkout (as `examples/platform`
/// is): it is stored relative to `root`, the directory that will hold `arq.toml` (or the
/// standalone crate), and each crate's `Cargo.toml` gets it relative to its own directory.
fn source(args: &SourceArgs, root: &Path) -> Result<ArqSource, CliError> {
    if let Some(p) = &args.arq_path {
        let abs = std::fs::canonicalize(p)
            .map_err(|e| GenerateError::Usage(format!("--arq-path {}: {e}", p.display())))?;
        if !abs.join("arq-core").join("Cargo.toml").is_file() {
            return Err(GenerateError::Usage(format!(
                "--arq-path {} is not an arq checkout (no arq-core/Cargo.toml in it)",
                abs.display()
            ))
            .into());
        }
        let path = if p.is_relative() {
            relative_path(&absolute(root)?, &abs)
        } else {
            abs.to_string_lossy().into_owned()
        };
        return Ok(ArqSource {
            version: None,
            path: Some(path),
            git: None,
        });
    }
    if let Some(g) = &args.arq_git {
        return Ok(ArqSource {
            version: None,
            path: None,
            git: Some(g.clone()),
        });
    }
    Ok(match &args.arq_version {
        Some(v) => ArqSource {
            version: Some(v.clone()),
            path: None,
            git: None,
        },
        None => ArqSource::default(),
    })
}

/// `dir` as an absolute path without `.` or `..`, whether or not it exists yet.
fn absolute(dir: &Path) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .map_err(|e| GenerateError::Usage(format!("cannot read the current directory: {e}")))?;
    let mut out = PathBuf::new();
    for c in cwd.join(dir).components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    // Resolve symlinks in the part that exists, so it compares with the canonical target.
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => rest.push(name.to_owned()),
            None => break,
        }
        existing.pop();
    }
    let mut resolved = std::fs::canonicalize(&existing).unwrap_or(existing);
    resolved.extend(rest.iter().rev());
    Ok(resolved)
}

/// The path from directory `from` to `to` (both absolute), with `/` separators.
fn relative_path(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_owned(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

fn templates(args: &GenArgs) -> Result<Templates, CliError> {
    Ok(match &args.templates {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::embedded(),
    })
}

/// Runs a parsed command line, writing human output to `out`. Returns the exit code.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<u8, CliError> {
    match cli.command {
        Command::Init(args) => {
            let opts = InitOptions {
                dir: args.dir.clone(),
                name: args.name.as_deref().map(str::parse).transpose()?,
                arq: source(&args.source, &args.dir)?,
            };
            let t = templates(&args.gen_args)?;
            let generated = generate::plan_init(&opts, &t)?;
            finish(&generated, &t, &args.gen_args, out)
        }
        Command::New(NewCommand::Service(args)) => {
            let name: Name = args.name.parse()?;
            let cwd = std::env::current_dir().map_err(|e| {
                GenerateError::Usage(format!("cannot read the current directory: {e}"))
            })?;
            let root = match &args.platform {
                Some(p) => {
                    if !p.join(manifest::MANIFEST_FILE).is_file() {
                        return Err(GenerateError::Usage(format!(
                            "--platform {} has no arq.toml; run `arq init` there first",
                            p.display()
                        ))
                        .into());
                    }
                    Some(p.clone())
                }
                None => manifest::find_platform_root(&cwd),
            };
            let arq = source(
                &args.source,
                &root.clone().unwrap_or_else(|| cwd.join(name.as_str())),
            )?;
            let opts = NewServiceOptions {
                name,
                kind: args.kind,
                port: args.port,
                route: args.route.clone(),
                queues: args.queues.clone(),
                database: !args.no_db,
                arq,
            };
            let t = templates(&args.gen_args)?;
            let generated = generate::plan_new_service(root.as_deref(), &cwd, &opts, &t)?;
            finish(&generated, &t, &args.gen_args, out)
        }
        Command::Check(args) => run_check(&args, out),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "arq", out);
            Ok(EXIT_OK)
        }
    }
}

fn run_check(args: &CheckArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let io =
        |e: std::io::Error| CliError(GenerateError::Usage(format!("cannot write output: {e}")));
    if args.list_rules {
        write!(out, "{}", check::registry::list()).map_err(io)?;
        return Ok(EXIT_OK);
    }
    if let Some(id) = &args.explain {
        let rule = check::registry::find(id).ok_or_else(|| {
            GenerateError::Usage(format!(
                "unknown rule {id:?}; `arq check --list-rules` lists them"
            ))
        })?;
        write!(out, "{}", check::registry::explain(rule)).map_err(io)?;
        return Ok(EXIT_OK);
    }
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let cwd = std::env::current_dir().map_err(|e| {
                GenerateError::Usage(format!("cannot read the current directory: {e}"))
            })?;
            manifest::find_platform_root(&cwd).unwrap_or(cwd)
        }
    };
    let database_url = if args.live {
        Some(args.database_url.clone().ok_or_else(|| {
            GenerateError::Usage(
                "--live needs a database: pass --database-url or set DATABASE_URL".to_owned(),
            )
        })?)
    } else {
        None
    };
    let opts = check::CheckOptions {
        baseline: args.baseline.clone(),
        database_url,
        runtime_role: Some(args.runtime_role.clone()),
    };
    let report = check::run(&root, &opts)?;
    if let Some(path) = &args.write_baseline {
        check::baseline::write(path, &report.findings)?;
        writeln!(
            out,
            "wrote {} finding(s) to the baseline {}",
            report.findings.len(),
            path.display()
        )
        .map_err(io)?;
        return Ok(if report.has_input_errors() {
            EXIT_ERROR
        } else {
            EXIT_OK
        });
    }
    write!(out, "{}", check::output::render(&report, args.format)).map_err(io)?;
    Ok(report.exit_code(args.fail_on))
}

fn finish(
    generated: &Generated,
    templates: &Templates,
    args: &GenArgs,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let bold = Style::new().bold();
    let green = AnsiColor::Green.on_default();
    let yellow = AnsiColor::Yellow.on_default();
    let io =
        |e: std::io::Error| CliError(GenerateError::Usage(format!("cannot write output: {e}")));
    for (name, path) in templates.overridden() {
        writeln!(out, "template {name} from {}", path.display()).map_err(io)?;
    }
    let plan = &generated.plan;
    if args.dry_run {
        let conflicts = plan.conflicts();
        write!(out, "{}", plan.diff()).map_err(io)?;
        writeln!(
            out,
            "{bold}dry run{bold:#}: {} — {} file(s) would change, nothing written",
            generated.summary,
            plan.steps
                .iter()
                .filter(|s| s.change() != Change::Unchanged)
                .count()
        )
        .map_err(io)?;
        if !conflicts.is_empty() {
            writeln!(
                out,
                "{yellow}warning{yellow:#}: edited since generation (needs --force): {}",
                conflicts.join(", ")
            )
            .map_err(io)?;
        }
        return Ok(EXIT_OK);
    }
    if plan.is_noop() {
        writeln!(out, "{} is up to date; nothing to do", generated.summary).map_err(io)?;
        return Ok(EXIT_OK);
    }
    let done = plan.apply(args.force)?;
    for (change, path) in &done {
        let verb = match change {
            Change::Create => "create",
            Change::Update => "update",
            Change::Unchanged => continue,
        };
        writeln!(out, "  {green}{verb:>6}{green:#} {path}").map_err(io)?;
    }
    writeln!(out, "{bold}generated{bold:#} {}", generated.summary).map_err(io)?;
    Ok(EXIT_OK)
}
