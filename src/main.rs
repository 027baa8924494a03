//! The `sipblade` binary: see [`sipblade::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    sipblade::cli::main()
}
