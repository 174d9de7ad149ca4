//! Resolving model and dataset ids through the Hugging Face cache (or local directories).
//!
//! Mirrors the Python tools: `HF_HOME` (or `HF_HUB_CACHE`) picks the cache, `HF_ENDPOINT` the
//! Hub, `HF_TOKEN` (or the token file) authenticates, `HF_HUB_DOWNLOAD_TIMEOUT` bounds every wait,
//! and `HF_HUB_OFFLINE=1` forbids any network access. A Hub id may carry a revision, `org/name@v1`
//! (what `--revision` adds).

mod cache;
mod client;
mod download;
mod repo;
mod suggest;

use anyhow::{bail, Context, Result};
pub use cache::{cache_dir, hf_address};
pub use repo::{offline, Repo, RepoKind};
use std::path::{Path, PathBuf};

/// Where a model or dataset lives: a local directory or a repository on the Hub.
#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Hub(Repo),
}

/// `spec` at `revision`: `org/name@revision`, for [`Source::parse`]. Refused for a directory or
/// a spec that already names a revision.
pub fn with_revision(spec: &str, revision: Option<&str>) -> Result<String> {
    let Some(rev) = revision else { return Ok(spec.to_string()) };
    if Path::new(spec).is_dir() {
        bail!("--revision {rev}: {spec} is a local directory; a revision applies to a Hub id");
    }
    if spec.contains('@') {
        bail!("--revision {rev}: {spec} already names a revision");
    }
    Ok(format!("{spec}@{rev}"))
}

impl Source {
    /// Interprets `spec` as a local directory when one exists at that path (or when it is
    /// clearly a path), otherwise as a Hub repository id, `org/name` or `org/name@revision`.
    pub fn parse(spec: &str, kind: RepoKind) -> Result<Source> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.contains('\\')
            || spec.matches('/').count() > 1 && !spec.contains('@')
            || path.exists();
        if looks_like_path {
            if path.exists() {
                bail!("{spec}: expected a directory, found a file");
            }
            bail!("{spec}: no such directory");
        }
        let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let valid_id = !id.is_empty()
            && id.matches('/').count() <= 1
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !valid_id {
            bail!("{spec:?} is neither a directory nor a valid Hub repository id");
        }
        check_revision(revision)?;
        Ok(Source::Hub(Repo { id: id.to_string(), kind, revision: revision.to_string() }))
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Hub(r) if r.revision == "main" => r.id.clone(),
            Source::Hub(r) => format!("{}@{}", r.id, r.revision),
        }
    }

    /// Path of `file` in this source, downloading it into the cache when allowed.
    /// Returns `Ok(None)` when the file does not exist (locally, in the cache when offline,
    /// or on the Hub).
    pub fn get_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        match self {
            Source::Dir(dir) => {
                let p = dir.join(file);
                if std::fs::symlink_metadata(&p).is_err() {
                    return Ok(None);
                }
                // It is there: a directory, FIFO or broken link in its place is an error that says so.
                crate::fsx::check_regular_file(&p)?;
                Ok(Some(p))
            }
            Source::Hub(repo) => download::file(repo, file),
        }
    }

    /// Like [`Source::get_optional`], but a missing file is an error that says where it looked.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        match self.get_optional(file)? {
            Some(p) => Ok(p),
            None => match self {
                Source::Dir(dir) => bail!("{}: missing file {file}", dir.display()),
                Source::Hub(repo) => {
                    let (what, id) = (repo.kind.noun(), self.describe());
                    if offline() {
                        bail!(
                            "{what} {id}: {file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set{}",
                            cache_dir().display(),
                            suggest::hint(repo, true)
                        )
                    }
                    bail!("{what} {id}: no file {file} on the Hub")
                }
            },
        }
    }
}

/// A revision becomes a path under `refs/` in the cache: nothing that could leave it.
fn check_revision(rev: &str) -> Result<()> {
    let ok = !rev.is_empty()
        && rev.len() <= 256
        && rev.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && rev.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        bail!("revision {rev:?}: expected a branch, tag or commit id");
    }
    Ok(())
}

impl Source {
    /// Every file of the repository or directory, as paths relative to its root, sorted.
    /// Online, a Hub repository is listed by the Hub API (which also tells the cache which
    /// commit the revision is at); offline, or when the Hub cannot be reached and the cache holds
    /// the revision, by its cached snapshot.
    pub fn list_files(&self) -> Result<Vec<String>> {
        let mut files = match self {
            Source::Dir(dir) => walk(dir)?,
            Source::Hub(repo) => list_hub(repo)?,
        };
        files.sort();
        Ok(files)
    }
}

fn list_hub(repo: &Repo) -> Result<Vec<String>> {
    let cache = cache::RepoCache::new(repo.kind, &repo.id);
    let cached = || -> Result<Vec<String>> {
        let commit = cache.commit(&repo.revision).filter(|c| cache.snapshot(c).is_dir()).ok_or_else(|| {
            anyhow::anyhow!(
                "{} {} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set{}",
                repo.kind.noun(),
                Source::Hub(repo.clone()).describe(),
                cache_dir().display(),
                suggest::hint(repo, true)
            )
        })?;
        walk(&cache.snapshot(&commit))
    };
    if offline() {
        return cached();
    }
    let client = client::Client::shared()?;
    let listed = match client::unreachable() {
        Some(down) => Err(down),
        None => client.listing(repo),
    };
    match listed {
        Ok((commit, files)) => {
            for f in &files {
                download::check_relative(f).with_context(|| format!("the Hub's listing of {}", repo.id))?;
            }
            cache.set_ref(&repo.revision, &commit)?;
            Ok(files)
        }
        Err(f @ (client::Failure::Unreachable(_) | client::Failure::TimedOut))
            if cache.has_snapshot(&repo.revision) =>
        {
            if client::note_unreachable(&f) {
                log::warn!("{}; using the cache for the rest of this run", download::explain(&f, repo, client));
            }
            cached()
        }
        Err(f) => Err(download::explain(&f, repo, client)).with_context(|| format!("listing the files of {}", repo.id)),
    }
}

fn walk(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(out)
}

/// The tokenizer files a model directory carries, when its source has them.
pub const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"];

/// Copies the [`TOKENIZER_FILES`] that `source` has into `dir` (each written atomically).
pub fn copy_tokenizer_files(source: &Source, dir: &Path) -> Result<()> {
    write_files(dir, &read_tokenizer_files(source)?)
}

/// The [`TOKENIZER_FILES`] that `source` has, by name, read into memory (for every checkpoint).
pub fn read_tokenizer_files(source: &Source) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in TOKENIZER_FILES {
        if let Some(src) = source.get_optional(name)? {
            out.push((name, std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?));
        }
    }
    Ok(out)
}

/// Writes each (name, bytes) into `dir`, atomically.
pub fn write_files(dir: &Path, files: &[(&'static str, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in files {
        crate::fsx::write_atomic(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// The files that make up a model checkpoint.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub source: Source,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub weights: PathBuf,
}

impl ModelFiles {
    /// Resolves `spec` (a directory or a Hub id) to its config, tokenizer and weights.
    pub fn resolve(spec: &str) -> Result<ModelFiles> {
        Self::from_source(Source::parse(spec, RepoKind::Model)?)
    }

    /// The model files in directory `dir` (any path, UTF-8 or not).
    pub fn from_dir(dir: &Path) -> Result<ModelFiles> {
        if !dir.is_dir() {
            bail!("{}: no such directory", dir.display());
        }
        Self::from_source(Source::Dir(dir.to_path_buf()))
    }

    fn from_source(source: Source) -> Result<ModelFiles> {
        let config = source.get("config.json")?;
        let tokenizer = source.get("tokenizer.json")?;
        let tokenizer_config = source.get_optional("tokenizer_config.json")?;
        let weights = match source.get_optional("model.safetensors")? {
            Some(p) => p,
            None => {
                if source.get_optional("model.safetensors.index.json")?.is_some() {
                    bail!("{}: sharded safetensors checkpoints are not supported", source.describe());
                }
                if source.get_optional("pytorch_model.bin")?.is_some() {
                    bail!(
                        "{}: only pytorch_model.bin is available; convert it to model.safetensors first",
                        source.describe()
                    );
                }
                source.get("model.safetensors")?
            }
        };
        Ok(ModelFiles { source, config, tokenizer, tokenizer_config, weights })
    }
}
