//! The `peerlm` command-line tool: parses the command line (see `cli/`) and turns any error into one line
//! on stderr and a non-zero exit status.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peerlm: error: {error}");
            ExitCode::FAILURE
        }
    }
}
