//! `sipblade certs`: cluster CA and per-blade certificates.
//!
//! Prints one line per file written (`wrote PATH`), after `using existing CA
//! PATH` when the directory already had one. See [`crate::cluster::certs`].
use std::path::Path;
use std::process::ExitCode;

use crate::cluster::certs::{ca_cert_path, generate_cluster};

use super::{EXIT_INVALID, EXIT_USAGE};

pub(crate) fn run(dir: &Path, blades: &[String]) -> ExitCode {
    match generate_cluster(dir, blades) {
        Ok(generated) => {
            if !generated.ca_created {
                println!("using existing CA {}", ca_cert_path(dir).display());
            }
            for path in &generated.written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
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
