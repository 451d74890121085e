//! The `berth` command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    berth::cli::main()
}
