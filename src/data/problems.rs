//! Rows that cannot be used: what is wrong with each, and where they go while reading (a leaf
//! the readers and the assembly of splits share).

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A row that could not be used, found while reading leniently (`check-data`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowProblem {
    pub file: PathBuf,
    /// 1-based line (text formats) or row (parquet); 0 when it concerns the whole file.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Where row problems go: strict reading stops at the first; lenient reading records them
/// and skips the row.
pub(super) struct Sink {
    pub strict: bool,
    pub problems: Vec<RowProblem>,
}

impl Sink {
    pub fn row(&mut self, file: &Path, line: usize, message: String) -> Result<()> {
        let p = RowProblem { file: file.to_path_buf(), line, message };
        if self.strict {
            bail!("{p}");
        }
        self.problems.push(p);
        Ok(())
    }
}
