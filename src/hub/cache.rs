//! The Hugging Face cache, laid out exactly as `huggingface_hub` lays it out, so that either tool
//! reads what the other wrote:
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/
//!   refs/<revision>                  the commit a branch or tag pointed at when last resolved
//!   blobs/<etag>                     file contents, named by the Hub's ETag (sha256 for LFS files)
//!   blobs/<etag>.incomplete          a download in progress (resumed with a Range request)
//!   snapshots/<commit>/<path>        relative symlinks into blobs/
//!   .no_exist/<commit>/<path>        empty files: the Hub said this path does not exist
//! $HF_HUB_CACHE/.locks/models--org--name/<etag>.lock
//! ```

use super::repo::RepoKind;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The cache directory in use: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (as `huggingface_hub`).
pub fn cache_dir() -> PathBuf {
    env_path("HF_HUB_CACHE").unwrap_or_else(|| hf_home().join("hub"))
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    env_path("HF_HOME").unwrap_or_else(|| {
        let xdg = env_path("XDG_CACHE_HOME").unwrap_or_else(|| env_path("HOME").unwrap_or_default().join(".cache"));
        xdg.join("huggingface")
    })
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// True for a full 40-hex-digit commit id: a revision that needs no resolving.
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What the cache knows of one file at one revision.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Present(PathBuf),
    /// The Hub said the file does not exist at this revision.
    Absent,
    Unknown,
}

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    base: PathBuf,
    folder: String,
}

/// The folder of a repository in the cache: `models--org--name`, `datasets--org--name`.
fn folder_name(kind: RepoKind, id: &str) -> String {
    format!("{}--{}", kind.api_name(), id.replace('/', "--"))
}

/// The kind and id a cache folder name stands for ([`folder_name`] read back).
pub fn parse_folder(name: &str) -> Option<(RepoKind, String)> {
    let (kind, rest) = name.split_once("--")?;
    let kind = match kind {
        "models" => RepoKind::Model,
        "datasets" => RepoKind::Dataset,
        _ => return None,
    };
    Some((kind, rest.replacen("--", "/", 1)))
}

/// A file of a cached snapshot (`…/datasets--org--name/snapshots/<commit>/path`) by the
/// address `huggingface_hub`'s file system gives it: `hf://datasets/org/name/path`.
pub fn hf_address(path: &str) -> Option<String> {
    let (before, after) = path.split_once("/snapshots/")?;
    let (kind, id) = parse_folder(before.rsplit('/').next()?)?;
    let rest = after.split_once('/')?.1;
    Some(format!("hf://{}{id}/{rest}", kind.url_prefix()))
}

impl RepoCache {
    pub fn new(kind: RepoKind, id: &str) -> RepoCache {
        RepoCache { base: cache_dir(), folder: folder_name(kind, id) }
    }

    pub fn root(&self) -> PathBuf {
        self.base.join(&self.folder)
    }

    /// The commit `revision` stands for in the cache: itself when it is a commit id, else what
    /// `refs/<revision>` records.
    pub fn commit(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.root().join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit(commit).then(|| commit.to_string())
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root().join("snapshots").join(commit)
    }

    /// True when the cache holds a snapshot of `revision` (some of its files at least).
    pub fn has_snapshot(&self, revision: &str) -> bool {
        self.commit(revision).is_some_and(|c| self.snapshot(&c).is_dir())
    }

    pub fn lookup(&self, revision: &str, file: &str) -> Lookup {
        let Some(commit) = self.commit(revision) else { return Lookup::Unknown };
        let path = self.snapshot(&commit).join(file);
        if path.is_file() {
            return Lookup::Present(path);
        }
        if self.root().join(".no_exist").join(&commit).join(file).exists() {
            return Lookup::Absent;
        }
        Lookup::Unknown
    }

    /// Records that `file` does not exist at `commit`, so that later runs (and offline ones)
    /// need not ask again.
    pub fn record_absent(&self, revision: &str, commit: &str, file: &str) -> Result<()> {
        let path = self.root().join(".no_exist").join(commit).join(file);
        create_parent(&path)?;
        std::fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
        self.set_ref(revision, commit)
    }

    /// Records which commit `revision` points at (nothing to record for a commit id).
    pub fn set_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.root().join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == commit) {
            return Ok(());
        }
        create_parent(&path)?;
        crate::fsx::write_atomic(&path, commit.as_bytes())
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root().join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root().join("blobs").join(format!("{etag}.incomplete"))
    }

    /// Links `snapshots/<commit>/<file>` to the blob `etag` (which must be complete) and returns
    /// the snapshot path.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let dst = self.snapshot(commit).join(file);
        create_parent(&dst)?;
        let blob = self.blob(etag);
        if dst.is_file() {
            return Ok(dst);
        }
        let _ = std::fs::remove_file(&dst); // a dangling link left by a deleted blob
        link_or_copy(&blob, &dst)?;
        Ok(dst)
    }

    /// An exclusive lock on the download of blob `etag`, held until dropped, so that two
    /// processes never append to the same `.incomplete` file.
    pub fn lock(&self, etag: &str) -> Result<FileLock> {
        let path = self.base.join(".locks").join(&self.folder).join(format!("{etag}.lock"));
        create_parent(&path)?;
        FileLock::acquire(&path)
    }
}

fn create_parent(path: &Path) -> Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// A relative link (`../../blobs/<etag>`, as `huggingface_hub` makes them, so the cache can be
/// moved), or a copy where the file system has no symlinks.
fn link_or_copy(blob: &Path, dst: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let depth = dst
            .strip_prefix(blob.parent().and_then(Path::parent).unwrap_or(Path::new("")))
            .map_or(0, |rel| rel.components().count().saturating_sub(1));
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().expect("a blob has a name"));
        if std::os::unix::fs::symlink(&target, dst).is_ok() {
            return Ok(());
        }
    }
    std::fs::copy(blob, dst).map(|_| ()).with_context(|| format!("copying {} to {}", blob.display(), dst.display()))
}

/// An advisory lock (`flock`) on a file, released when dropped.
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this function owns; the lock goes with the descriptor
            // when `file` is closed on drop.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_need_forty_lowercase_hex_digits() {
        assert!(is_commit("b0671f6d149444f26b618c600c16646542618a82"));
        assert!(!is_commit("main"));
        assert!(!is_commit("B0671F6D149444F26B618C600C16646542618A82"));
        assert!(!is_commit("b0671f6d149444f26b618c600c16646542618a8"));
    }

    #[test]
    fn snapshot_links_are_relative_to_the_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = RepoCache { base: tmp.path().to_path_buf(), folder: "models--org--name".into() };
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(cache.root().join("blobs")).unwrap();
        std::fs::write(cache.blob("abc"), b"data").unwrap();
        let p = cache.link(commit, "split/train.parquet", "abc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        #[cfg(unix)]
        assert_eq!(std::fs::read_link(&p).unwrap(), Path::new("../../../blobs/abc"));
        cache.set_ref("main", commit).unwrap();
        assert_eq!(cache.lookup("main", "split/train.parquet"), Lookup::Present(p));
        assert_eq!(cache.lookup("main", "README.md"), Lookup::Unknown);
        cache.record_absent("main", commit, "README.md").unwrap();
        assert_eq!(cache.lookup("main", "README.md"), Lookup::Absent);
    }

    #[test]
    fn folder_names_read_back_and_give_hf_addresses() {
        assert_eq!(folder_name(RepoKind::Dataset, "dair-ai/emotion"), "datasets--dair-ai--emotion");
        assert_eq!(parse_folder("datasets--dair-ai--emotion"), Some((RepoKind::Dataset, "dair-ai/emotion".into())));
        assert_eq!(parse_folder(".locks"), None);
        let cached = "/h/hub/datasets--dair-ai--emotion/snapshots/b0671f6d/split/test-00000-of-00001.parquet";
        assert_eq!(hf_address(cached).unwrap(), "hf://datasets/dair-ai/emotion/split/test-00000-of-00001.parquet");
        assert_eq!(hf_address("/h/hub/models--org--m/snapshots/abc/config.json").unwrap(), "hf://org/m/config.json");
        assert_eq!(hf_address("/data/train.csv"), None);
    }
}
