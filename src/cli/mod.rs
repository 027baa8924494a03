//! The `sipblade` command line: one binary, one subcommand per job.
//!
//! Exit status (SPEC §3): 0 on success, 1 on invalid input, 2 on usage or
//! I/O errors. Errors go to stderr as one line each.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod certs;
mod check;
mod demo;
mod load;
mod parse;
mod run;

/// Exit status for invalid input (a bad SIP message, a bad config).
pub const EXIT_INVALID: u8 = 1;
/// Exit status for usage and I/O errors.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "sipblade",
    version,
    about = "SIP front end for cloud call centres"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one blade.
    Run {
        /// Configuration file (TOML); without it, an embedded single-blade default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration as `run` would read it (the config file, the
    /// agents file, the cluster certificates), without starting a blade.
    Check {
        /// Configuration file (TOML); without it, the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start two blades on loopback and place a cross-blade call between two
    /// simulated agents, printing the SIP ladder.
    Demo,
    /// Parse each file (or stdin) as one SIP message; print one JSON line each.
    Parse {
        /// Files to parse; stdin when none.
        files: Vec<PathBuf>,
    },
    /// SIP load generator: callers and callees over UDP against a blade
    /// (find its maximum calls per second).
    Load {
        #[command(subcommand)]
        command: load::LoadCommand,
    },
    /// Create a cluster CA and one certificate and key per blade.
    Certs {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Comma-separated blade ids.
        #[arg(long, value_delimiter = ',', required = true)]
        blades: Vec<String>,
    },
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(help_flags_of_help_dropped(std::env::args_os())) {
        Ok(cli) => cli,
        // --help and --version: clap prints them to stdout.
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sipblade: {}", usage_error_line(&err));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Run { config } => run::run(config),
        Command::Check { config } => check::run(config.as_deref()),
        Command::Demo => demo::run(),
        Command::Parse { files } => parse::run(&files),
        Command::Certs { dir, blades } => certs::run(&dir, &blades),
        Command::Load { command } => load::run(command),
    }
}

/// `help` is a command too, so `sipblade help [COMMAND] --help` should
/// work; clap's built-in `help` takes no flags, so `--help` and `-h` after
/// it are dropped: `help --help` prints the top-level help.
fn help_flags_of_help_dropped(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let args: Vec<_> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "help") {
        args.into_iter()
            .enumerate()
            .filter(|(i, a)| *i < 2 || (a != "--help" && a != "-h"))
            .map(|(_, a)| a)
            .collect()
    } else {
        args
    }
}

/// Writes `text` to standard output. A full disk or a closed file is an
/// I/O error (exit 2) told on one stderr line, not a panic; a reader that
/// went away (`| head`) needs no telling.
pub(crate) fn write_stdout(command: &str, text: &str) -> Result<(), ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(err) => {
            if err.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("sipblade: {command}: cannot write to standard output: {err}");
            }
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// A usage error as one line (SPEC §3), from clap's multi-line rendering:
/// its first paragraph without the `error: ` prefix, and which `--help`
/// to read.
fn usage_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    // `Usage: sipblade load run [OPTIONS] ...`: the command path is the
    // words before the first placeholder.
    // clap leaves the usage out of some errors (a missing option value):
    // then the subcommands named on the command line say which.
    let from_args = command_path(
        std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let usage = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .unwrap_or(&from_args);
    let command: Vec<&str> = usage
        .split_whitespace()
        .take_while(|w| !w.starts_with(['[', '<', '-']))
        .collect();
    let help = format!("see `{} --help`", command.join(" "));
    if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return format!("a command is required: {usage} ({help})");
    }
    let first: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let first = first.join(" ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    // clap's tips (the flag meant, `--` before a value that looks like a
    // flag) are what a user needs most: kept, on the same line.
    let tips: String = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .map(|tip| format!("; {tip}"))
        .collect();
    format!("{first}{tips} ({help})")
}

/// `sipblade` and the subcommands that lead `args`, as in `sipblade load
/// run`.
fn command_path(args: impl IntoIterator<Item = String>) -> String {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut path = vec![command.get_name().to_owned()];
    for arg in args {
        let Some(sub) = command.find_subcommand(&arg).cloned() else {
            break;
        };
        path.push(sub.get_name().to_owned());
        command = sub;
    }
    path.join(" ")
}
