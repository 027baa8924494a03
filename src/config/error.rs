//! Configuration errors that name the file and the line.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration or provisioning file that cannot be used.
///
/// Displays as one line: `FILE:LINE: what is wrong` (or `FILE: ...` when no
/// line applies, as for I/O errors).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}{}", path.display(), NamedBy(named_by))]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
        /// The config file and line that named this file, if another file
        /// did.
        named_by: Option<(PathBuf, usize)>,
    },
    /// The file was read but its content is wrong.
    #[error("{}: {message}", At(path, *line))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the fault, when known.
        line: Option<usize>,
        /// What is wrong, on one line.
        message: String,
    },
}

impl ConfigError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Io { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }

    /// The 1-based line of the fault, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// Whether the file could not be read (an I/O error, exit status 2)
    /// rather than read and found wrong (exit status 1).
    pub fn is_io(&self) -> bool {
        matches!(self, ConfigError::Io { .. })
    }

    /// Notes that line `line` of config file `config` named the file at
    /// fault (for a file that could not be read).
    pub(crate) fn named_by(self, config: &Path, line: usize) -> ConfigError {
        match self {
            ConfigError::Io { path, source, .. } => ConfigError::Io {
                path,
                source,
                named_by: Some((config.to_owned(), line)),
            },
            invalid => invalid,
        }
    }
}

/// ` (named at FILE:LINE)`, or nothing.
struct NamedBy<'a>(&'a Option<(PathBuf, usize)>);

impl fmt::Display for NamedBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((file, line)) => write!(f, " (named at {}:{line})", file.display()),
            None => Ok(()),
        }
    }
}

/// `FILE:LINE`, or `FILE` alone.
struct At<'a>(&'a Path, Option<usize>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(line) => write!(f, "{}:{line}", self.0.display()),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

/// Reads a whole file, naming it in the error. A file that was read but
/// is not UTF-8 (TOML must be) is invalid input at the line of its first
/// bad byte, not an I/O error.
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
        named_by: None,
    })?;
    String::from_utf8(bytes).map_err(|err| {
        let bytes = err.as_bytes();
        let at = err.utf8_error().valid_up_to();
        ConfigError::Invalid {
            path: path.to_owned(),
            line: Some(line_at(bytes, at)),
            message: "not UTF-8 text (TOML must be UTF-8)".to_owned(),
        }
    })
}

/// The 1-based line of `text` holding byte `offset` (the last line past
/// the end).
fn line_at(text: &[u8], offset: usize) -> usize {
    let upto = text.get(..offset).unwrap_or(text);
    memchr::memchr_iter(b'\n', upto).count() + 1
}

/// The text of one file and its name: turns byte spans into line numbers.
pub(crate) struct Source<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    /// Deserialises the whole file.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|err| self.error(err.span(), err.message()))
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_at(self.text.as_bytes(), offset)
    }

    /// An error at the line where byte span `span` starts.
    pub(crate) fn error(&self, span: Option<Range<usize>>, message: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: span.map(|span| self.line_of(span.start)),
            message: one_line(message),
        }
    }

    /// An error at `span` (a [`toml::Spanned`] value's span).
    pub(crate) fn at(&self, span: Range<usize>, message: impl AsRef<str>) -> ConfigError {
        self.error(Some(span), message.as_ref())
    }
}

/// Joins a multi-line parser message into one line, as SPEC §3 asks.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_and_display() {
        let src = Source {
            path: Path::new("x.toml"),
            text: "a\nb\nc",
        };
        assert_eq!(src.at(0..1, "m").line(), Some(1));
        assert_eq!(src.at(2..3, "m").line(), Some(2));
        assert_eq!(src.at(4..5, "m").line(), Some(3));
        assert_eq!(src.at(99..100, "m").line(), Some(3));
        assert_eq!(
            src.at(2..3, "bad\n  value\n").to_string(),
            "x.toml:2: bad; value"
        );
        assert_eq!(src.error(None, "m").to_string(), "x.toml: m");
    }
}
