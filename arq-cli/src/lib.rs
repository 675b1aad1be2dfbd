//! # arq-cli
//!
//! The library behind the `arq` binary. Following ripgrep and sqlx-cli, the command line is
//! parsed into [`Cli`] without doing any I/O, then acted on; the binary is a thin `main`.
//!
//! `arq new service NAME` (generate a service and wire it into a platform) and `arq check` (the
//! CI gate) are added by their own issues.
//!
//! # Example
//!
//! ```
//! use arq_cli::Cli;
//! use clap::Parser;
//!
//! let cli = Cli::try_parse_from(["arq", "--version"]);
//! // `--version` is reported by clap as an early exit carrying the version text.
//! assert!(cli.unwrap_err().to_string().contains(env!("CARGO_PKG_VERSION")));
//! ```

use clap::Parser;

/// The `arq` command line.
#[derive(Debug, Parser)]
#[command(
    name = "arq",
    version,
    about = "Scaffold multi-tenant Rust services and check them in CI",
    long_about = None,
)]
pub struct Cli {}

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code when a check found problems.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code for usage, configuration or internal errors.
pub const EXIT_ERROR: u8 = 2;
