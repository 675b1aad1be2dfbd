//! The `arq` binary: parse, then act. See the `arq_cli` library for the commands.

use std::process::ExitCode;

use arq_cli::{Cli, EXIT_ERROR, EXIT_OK, run};
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
    let mut out = anstream::stdout();
    match run(cli, &mut out) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let red = anstyle::AnsiColor::Red.on_default().bold();
            let mut stderr = anstream::stderr();
            let _ =
                std::io::Write::write_fmt(&mut stderr, format_args!("{red}error{red:#}: {err}\n"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
