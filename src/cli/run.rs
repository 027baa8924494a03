//! `sipblade run [--config FILE]`: run one blade until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{EXIT_INVALID, EXIT_USAGE};
use crate::config::Config;
use crate::runtime::Blade;

pub(crate) fn run(config: Option<PathBuf>) -> ExitCode {
    init_logging();
    let config = match load(config.as_deref()) {
        Ok(config) => config,
        Err(status) => return status,
    };
    for warning in risky_settings(&config) {
        tracing::warn!("{warning}");
    }
    // Register for the signals before starting, so none is missed.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("sipblade: run: cannot watch signals: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Each SIP connection holds a descriptor; the blade shares out what
    // the limit allows (`runtime::limits`).
    let open_files = crate::runtime::limits::raise_open_files_limit();
    tracing::debug!(?open_files, "open-files limit");
    let blade = match Blade::start(config) {
        Ok(blade) => blade,
        Err(err) => {
            eprintln!("sipblade: run: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(signal) = signals.forever().next() {
        tracing::info!(
            signal,
            "stopping: finishing running transactions (signal again to stop at once)"
        );
        // A second signal cuts the drain short, as operators expect of a
        // second Ctrl-C; the answer is the same as for a drained stop.
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::warn!(signal, "stopping at once: running transactions abandoned");
                std::process::exit(0);
            }
        });
    }
    blade.stop();
    ExitCode::SUCCESS
}

/// Reads and checks the configuration (`path`, or the embedded default).
/// A fault is told on one stderr line, and its exit status returned.
pub(super) fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    let loaded = match path {
        Some(path) => Config::load(path),
        None => Config::embedded_default(),
    };
    loaded.map_err(|err| {
        eprintln!("sipblade: {err}");
        // SPEC §3: a file that cannot be read is an I/O error (2); one
        // that is read and wrong is invalid input (1).
        ExitCode::from(if err.is_io() {
            EXIT_USAGE
        } else {
            EXIT_INVALID
        })
    })
}

/// Settings that work but that an operator most likely did not mean:
/// told at start (and by `sipblade check`), not refused.
pub(super) fn risky_settings(config: &Config) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut warnings = Vec::new();
    if let Some(cluster) = &config.cluster {
        let mode = std::fs::metadata(&cluster.key)
            .ok()
            .map(|m| m.permissions().mode() & 0o777);
        if let Some(mode) = mode.filter(|m| m & 0o077 != 0) {
            warnings.push(format!(
                "the blade's private key {} is readable by others (mode {mode:o}): chmod 600 it",
                cluster.key.display()
            ));
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if config.blade.cores > cpus {
        warnings.push(format!(
            "more cores than CPUs ({} cores, {cpus} CPUs): executors will share CPUs, and each costs memory",
            config.blade.cores
        ));
    }
    warnings
}

/// Logs to stderr through `tracing`; `RUST_LOG` filters (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
