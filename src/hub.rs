//! Resolving model and dataset ids through the Hugging Face cache (or local directories).
//!
//! Mirrors the Python tools: `HF_HOME` picks the cache (`$HF_HOME/hub`), `HF_HUB_OFFLINE=1`
//! forbids any network access, and a file already in the cache is never downloaded again.

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// True when `HF_HUB_OFFLINE` is set to a truthy value, as `huggingface_hub` reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Where a model or dataset lives: a local directory or a repository on the Hub.
#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Hub { id: String, kind: RepoType },
}

impl Source {
    /// Interprets `spec` as a local directory when one exists at that path (or when it is
    /// clearly a path), otherwise as a Hub repository id.
    pub fn parse(spec: &str, kind: RepoType) -> Result<Source> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.contains('\\')
            || spec.matches('/').count() > 1
            || path.exists();
        if looks_like_path {
            if path.exists() {
                bail!("{spec}: expected a directory, found a file");
            }
            bail!("{spec}: no such directory");
        }
        let valid =
            !spec.is_empty() && spec.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !valid {
            bail!("{spec:?} is neither a directory nor a valid Hub repository id");
        }
        Ok(Source::Hub { id: spec.to_string(), kind })
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Hub { id, .. } => id.clone(),
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
            Source::Hub { id, kind } => {
                let repo = Repo::with_revision(id.clone(), *kind, "main".to_string());
                if let Some(p) = Cache::from_env().repo(repo.clone()).get(file) {
                    return Ok(Some(p));
                }
                if offline() {
                    return Ok(None);
                }
                let api = hf_hub::api::sync::ApiBuilder::from_env()
                    .with_progress(true)
                    .build()
                    .context("creating the Hugging Face Hub client")?;
                match api.repo(repo).get(file) {
                    Ok(p) => Ok(Some(p)),
                    Err(hf_hub::api::sync::ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => {
                        Ok(None)
                    }
                    Err(e) => Err(anyhow::Error::new(e).context(format!(
                        "downloading {file} from {id} (set HF_HUB_OFFLINE=1 to use only the cache at {})",
                        cache_dir().display()
                    ))),
                }
            }
        }
    }

    /// Like [`Source::get_optional`], but a missing file is an error that says where it looked.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        match self.get_optional(file)? {
            Some(p) => Ok(p),
            None => match self {
                Source::Dir(dir) => bail!("{}: missing file {file}", dir.display()),
                Source::Hub { id, kind } => {
                    let what = if matches!(kind, RepoType::Dataset) { "dataset" } else { "model" };
                    if offline() {
                        bail!(
                            "{what} {id}: {file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
                            cache_dir().display()
                        )
                    }
                    bail!("{what} {id}: no file {file} on the Hub")
                }
            },
        }
    }
}

impl Source {
    /// Every file of the repository or directory, as paths relative to its root, sorted.
    /// Online, a Hub repository is listed by the Hub API; offline (or when the Hub cannot be
    /// reached) by its cached snapshot.
    pub fn list_files(&self) -> Result<Vec<String>> {
        let mut files = match self {
            Source::Dir(dir) => walk(dir)?,
            Source::Hub { id, kind } => {
                let repo = Repo::with_revision(id.clone(), *kind, "main".to_string());
                let online = if offline() {
                    None
                } else {
                    let listed = hf_hub::api::sync::ApiBuilder::from_env()
                        .with_progress(false)
                        .build()
                        .map_err(anyhow::Error::new)
                        .and_then(|api| api.repo(repo.clone()).info().map_err(anyhow::Error::new));
                    match listed {
                        Ok(info) => Some(info.siblings.into_iter().map(|s| s.rfilename).collect()),
                        Err(e) => {
                            log::warn!("{id}: cannot list the repository on the Hub ({e:#}); using the cache");
                            None
                        }
                    }
                };
                match online {
                    Some(files) => files,
                    None => {
                        let root = cache_dir().join(repo.folder_name());
                        let commit = std::fs::read_to_string(root.join("refs").join("main")).map_err(|_| {
                            anyhow::anyhow!(
                                "{id} is not in the Hugging Face cache at {}{}",
                                cache_dir().display(),
                                if offline() { " and HF_HUB_OFFLINE is set" } else { "" }
                            )
                        })?;
                        walk(&root.join("snapshots").join(commit.trim()))?
                    }
                }
            }
        };
        files.sort();
        Ok(files)
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

/// The cache directory in use (`$HF_HOME/hub`, or `~/.cache/huggingface/hub`).
pub fn cache_dir() -> PathBuf {
    Cache::from_env().path().clone()
}

/// The tokenizer files a model directory carries, when its source has them.
pub const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"];

/// Copies the [`TOKENIZER_FILES`] that `source` has into `dir` (each written atomically).
pub fn copy_tokenizer_files(source: &Source, dir: &Path) -> Result<()> {
    for name in TOKENIZER_FILES {
        if let Some(src) = source.get_optional(name)? {
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            crate::fsx::write_atomic(&dir.join(name), &bytes)?;
        }
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
        Self::from_source(Source::parse(spec, RepoType::Model)?)
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
