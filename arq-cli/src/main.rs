//! The `arq` binary: parse, then act. See the `arq_cli` library for the commands.

use std::process::ExitCode;

use arq_cli::{Cli, EXIT_ERROR, EXIT_OK};
use clap::Parser;

fn main() -> ExitCode {
    let _cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version to stdout and usage errors to stderr itself.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_ERROR
            } else {
                EXIT_OK
            });
        }
    };
    ExitCode::from(EXIT_OK)
}
