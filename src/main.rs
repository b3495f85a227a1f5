//! The `peerlm` command-line tool: parses the command line (see `cli/`) and turns any error into one line
//! on stderr and a non-zero exit status.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    // Training frees and reallocates the same large buffers every step: keep them (kernels/memory.rs).
    peerlm::kernels::memory::retain_freed_buffers();
    match cli::run() {
        Ok(status) => status,
        Err(error) => {
            eprintln!("peerlm: error: {error}");
            ExitCode::FAILURE
        }
    }
}
