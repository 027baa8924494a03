//! `sipblade certs`: cluster CA and per-blade certificates.
//!
//! Prints one line per file written (`wrote PATH`), after `using existing CA
//! PATH` when the directory already had one. See [`crate::cluster::certs`].
use std::path::Path;
use std::process::ExitCode;

use crate::cluster::certs::{ca_cert_path, generate_cluster};

use super::{EXIT_INVALID, EXIT_USAGE, write_stdout};

pub(crate) fn run(dir: &Path, blades: &[String]) -> ExitCode {
    match generate_cluster(dir, blades) {
        Ok(generated) => {
            let mut text = String::new();
            if !generated.ca_created {
                text += &format!("using existing CA {}\n", ca_cert_path(dir).display());
            }
            for path in &generated.written {
                text += &format!("wrote {}\n", path.display());
            }
            match write_stdout("certs", &text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(code) => code,
            }
        }
        Err(err) => {
            eprintln!("sipblade: certs: {err}");
            ExitCode::from(if err.is_invalid_input() {
                EXIT_INVALID
            } else {
                EXIT_USAGE
            })
        }
    }
}
