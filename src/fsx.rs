//! Atomic file writes: a reader sees the old file or the complete new one, never a part.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary sibling of `path` that an atomic write goes through.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced and then
/// renamed over the destination.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if let Some(dir) = path.parent() {
            // Make the rename itself durable; not all platforms allow opening a directory.
            if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A file written bit by bit and put in place whole: it is built as a temporary sibling and
/// renamed over `path` by [`AtomicFile::commit`]; dropped before that, the sibling is removed.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let tmp = temp_path(path);
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, file: Some(file) })
    }

    /// The temporary file, to write to.
    pub fn file(&self) -> Result<std::fs::File> {
        let f = self.file.as_ref().context("the file was committed")?;
        f.try_clone().with_context(|| format!("opening {}", self.tmp.display()))
    }

    /// Syncs the temporary file and renames it over the destination.
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().context("the file was committed")?;
        f.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.path.display()))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Atomically writes `rows` as JSON lines: one compact JSON object per line.
pub fn write_json_lines_atomic<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    let mut text = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut text, &row)?;
        text.push(b'\n');
    }
    write_atomic(path, &text)
}

/// Atomically writes `value` as pretty-printed JSON with a trailing newline.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Checks that `path` is a regular file (following symlinks), with the precise reason when it is
/// not: missing, a directory, a FIFO, a device, a symlink loop, unreadable.
pub fn check_regular_file(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("{}: no such file", path.display()),
        Err(e) => anyhow::bail!("{}: cannot read it: {e}", path.display()),
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() { "a directory" } else { special_kind(&kind) };
    anyhow::bail!("{}: is {what}, not a regular file", path.display())
}

#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_check_says_what_the_path_is() {
        let dir = tempfile::tempdir().unwrap();
        let msg = |p: &Path| check_regular_file(p).unwrap_err().to_string();
        assert!(msg(&dir.path().join("missing.txt")).ends_with("no such file"));
        assert!(msg(dir.path()).contains("is a directory"));
        assert!(msg(Path::new("/dev/null")).contains("character device"));
        let a = dir.path().join("a");
        std::os::unix::fs::symlink(dir.path().join("b"), &a).unwrap();
        std::os::unix::fs::symlink(&a, dir.path().join("b")).unwrap();
        assert!(msg(&a).contains("symbolic links"), "{}", msg(&a));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(msg(&fifo).contains("FIFO"));
        std::fs::write(dir.path().join("ok.txt"), "x").unwrap();
        check_regular_file(&dir.path().join("ok.txt")).unwrap();
    }
}
