//! When an id finds nothing: what the user may have meant. A bare name that is no directory is
//! said to be none; ids the cache holds that are close to it are offered (`dair-ai/emotions` →
//! `dair-ai/emotion`, `emotion` → `dair-ai/emotion`), else, offline, what the cache holds.

use super::cache::{cache_dir, parse_folder};
use super::repo::{Repo, RepoKind};

/// The ids of the repositories of `kind` the cache holds a snapshot of, sorted.
pub fn cached_ids(kind: RepoKind) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(cache_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("snapshots").is_dir())
        .filter_map(|e| parse_folder(e.file_name().to_str()?).filter(|(k, _)| *k == kind).map(|(_, id)| id))
        .collect();
    ids.sort();
    ids
}

/// What to add to a not-found message about `repo` (empty when there is nothing useful).
pub fn hint(repo: &Repo, offline: bool) -> String {
    let mut out = String::new();
    if !repo.id.contains('/') && repo.kind == RepoKind::Model {
        out.push_str(&format!("; there is no directory {} here either", repo.id));
    }
    let cached = cached_ids(repo.kind);
    let close: Vec<&String> = cached.iter().filter(|c| *c != &repo.id && near(&repo.id, c)).collect();
    if !close.is_empty() {
        let list: Vec<&str> = close.iter().map(|c| c.as_str()).collect();
        out.push_str(&format!("; did you mean {} (in the cache)?", list.join(" or ")));
    } else if offline && !cached.is_empty() {
        let shown: Vec<&str> = cached.iter().take(8).map(String::as_str).collect();
        out.push_str(&format!("; the cache holds the {}s {}", repo.kind.noun(), shown.join(", ")));
    }
    out
}

/// Close enough to be a typo: the same name under some owner, or a few edits apart.
fn near(asked: &str, cached: &str) -> bool {
    let (a, c) = (asked.to_lowercase(), cached.to_lowercase());
    let name = c.rsplit('/').next().unwrap_or(&c);
    name == a || edits(&a, &c) <= (a.chars().count() / 8).clamp(1, 3)
}

/// Levenshtein distance.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_bare_names_are_near() {
        assert_eq!(edits("kitten", "sitting"), 3);
        assert!(near("dair-ai/emotions", "dair-ai/emotion"));
        assert!(near("emotion", "dair-ai/emotion"));
        assert!(near("Dair-AI/Emotion", "dair-ai/emotion"));
        assert!(!near("google-research-datasets/go_emotions", "dair-ai/emotion"));
        assert!(!near("distilbert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"));
    }
}
