//! `ScenarioError`: everything that can be wrong with a scenario before it runs.
//!
//! A scenario that parses and validates always runs to its end; what happens during the run is
//! an outcome (expectations held or not), never an error.

use std::path::PathBuf;

use thiserror::Error;

/// A scenario that could not be read, parsed or validated. Every variant names the file; parse
/// and validation errors also carry the 1-based line of the offending text when known.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not TOML, or does not fit the schema (unknown key, wrong type).
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The scenario file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// The TOML fits the schema but says something impossible (an unknown peer name, a piece
    /// past the end of the file, a restart before a crash).
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// 1-based line of the table the problem is in (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
}
