//! What names a repository on the Hub, shared by the cache, the client and the downloads.

/// True when `HF_HUB_OFFLINE` is set to a truthy value, as `huggingface_hub` reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    pub fn noun(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }

    /// Where the repository's paths start on the Hub (`/{prefix}{id}/resolve/...`).
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        }
    }

    pub fn api_name(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// The page of a repository on the Hub at `endpoint`.
    pub fn page(self, endpoint: &str, id: &str) -> String {
        format!("{endpoint}/{}{id}", self.url_prefix())
    }
}

/// A repository on the Hub at one revision (a branch, tag or commit id).
#[derive(Debug, Clone)]
pub struct Repo {
    pub id: String,
    pub kind: RepoKind,
    pub revision: String,
}
