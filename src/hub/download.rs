//! One file of a Hub repository, through the cache: what the cache holds for a commit is final;
//! a branch or tag is asked of the Hub (one HEAD) so that a moved branch is followed, and when
//! the Hub cannot be reached a cached copy is used with a warning, as `huggingface_hub` does.
//! Downloads go to `blobs/<etag>.incomplete`, resume after a cut, are checked against their
//! size and (for LFS files, whose ETag is their sha256) their hash, then renamed into place.

use super::cache::{is_commit, Lookup, RepoCache};
use super::client::{backoff, retryable, Client, Failure, Head, Meta, TRIES};
use super::repo::{offline, Repo};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The path of `file` of `repo` in the cache, downloading it when allowed; `None` when the Hub
/// (or, offline, the cache) says there is no such file.
pub fn file(repo: &Repo, file: &str) -> Result<Option<PathBuf>> {
    check_relative(file)?;
    let cache = RepoCache::new(repo.kind, &repo.id);
    let cached = cache.lookup(&repo.revision, file);
    let known = |l: Lookup| match l {
        Lookup::Present(p) => Some(p),
        _ => None,
    };
    if offline() || (is_commit(&repo.revision) && cached != Lookup::Unknown) {
        return Ok(known(cached));
    }
    let client = Client::shared()?;
    if let Some(down) = super::client::unreachable() {
        return match cached {
            Lookup::Unknown => Err(explain(&down, repo, client)).with_context(|| whose(repo, file)),
            known_there => Ok(known(known_there)),
        };
    }
    let meta = match client.metadata(repo, file) {
        Ok(Head::Found(meta)) => meta,
        Ok(Head::Missing { commit }) => {
            if let Some(c) = commit.filter(|c| is_commit(c)) {
                cache.record_absent(&repo.revision, &c, file)?;
            }
            return Ok(None);
        }
        // What the cache knows (the file, or that there is none) stands in for the Hub.
        Err(f @ (Failure::Unreachable(_) | Failure::TimedOut)) if cached != Lookup::Unknown => {
            if super::client::note_unreachable(&f) {
                log::warn!("{}; using the cache for the rest of this run", explain(&f, repo, client));
            }
            return Ok(known(cached));
        }
        Err(f) => return Err(explain(&f, repo, client)).with_context(|| whose(repo, file)),
    };
    if !cache.blob(&meta.etag).is_file() {
        download(client, &cache, &meta, repo, file).with_context(|| whose(repo, file))?;
    }
    let path = cache.link(&meta.commit, file, &meta.etag)?;
    cache.set_ref(&repo.revision, &meta.commit)?;
    Ok(Some(path))
}

fn whose(repo: &Repo, file: &str) -> String {
    format!("downloading {file} of {} {}", repo.kind.noun(), repo.id)
}

/// A path the Hub (or a user) names must stay inside the repository's folder.
pub fn check_relative(file: &str) -> Result<()> {
    let bad = file.is_empty()
        || file.starts_with('/')
        || file.contains('\\')
        || file.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        anyhow::bail!("{file:?} is not a file path inside a repository");
    }
    Ok(())
}

fn download(client: &Client, cache: &RepoCache, meta: &Meta, repo: &Repo, file: &str) -> Result<()> {
    let _lock = cache.lock(&meta.etag)?;
    let blob = cache.blob(&meta.etag);
    if blob.is_file() {
        return Ok(()); // another process finished it while this one waited for the lock
    }
    let part = cache.incomplete(&meta.etag);
    let blobs = part.parent().expect("blobs/ holds the part");
    std::fs::create_dir_all(blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .with_context(|| format!("opening {}", part.display()))?;
    // Small files (configs, cards) arrive at once; the large ones get a line and a bar.
    let large = meta.size.is_none_or(|s| s >= 1 << 20);
    if large {
        let size = meta.size.map_or_else(|| "size unknown".to_string(), |s| format!("{:.1} MB", s as f64 / 1e6));
        crate::status!("downloading {file} of {} {} ({size})", repo.kind.noun(), repo.id);
    }
    let bar = crate::progress::bytes_bar(if large { meta.size.unwrap_or(0) } else { 0 }, file);
    let fetch =
        || fetch_with_retries(client, meta, &out, &|pos| bar.set_position(pos)).map_err(|f| explain(&f, repo, client));
    fetch()?;
    if let Err(e) = verify(&part, meta) {
        // The bytes kept from an earlier try may be what is wrong: once more, from the first byte.
        log::warn!("{file} of {} {}: {e:#}; downloading it again whole", repo.kind.noun(), repo.id);
        out.set_len(0).with_context(|| format!("truncating {}", part.display()))?;
        fetch()?;
        if let Err(e) = verify(&part, meta) {
            let _ = std::fs::remove_file(&part);
            return Err(e.context("deleted the download; run again"));
        }
    }
    bar.finish_and_clear();
    out.sync_all().with_context(|| format!("syncing {}", part.display()))?;
    std::fs::rename(&part, &blob).with_context(|| format!("renaming {} to {}", part.display(), blob.display()))
}

/// Fetches the rest of the file into `out` until it has `meta.size` bytes, resuming after a
/// cut connection or a timeout, up to [`TRIES`] times.
fn fetch_with_retries(
    client: &Client,
    meta: &Meta,
    out: &std::fs::File,
    progress: &dyn Fn(u64),
) -> Result<(), Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut have = out.metadata().map_err(|e| Failure::Broken(e.to_string()))?.len();
        if meta.size.is_some_and(|s| have > s) {
            // Longer than the file: not a part of it. Start again.
            out.set_len(0).map_err(|e| Failure::Broken(e.to_string()))?;
            have = 0;
        }
        if have > 0 && meta.size == Some(have) {
            return Ok(()); // complete already (a run stopped before renaming it); the hash decides
        }
        let failure = match client.fetch_into(meta, out, have, progress) {
            Ok(n) if meta.size.is_none_or(|s| s == n) => return Ok(()),
            Ok(n) => Failure::Broken(format!("the connection closed after {n} of {} bytes", meta.size.unwrap_or(0))),
            Err(f) => f,
        };
        if tries >= TRIES || !retryable(&failure, true) {
            return Err(failure);
        }
        log::info!("download interrupted ({failure:?}); resuming, try {} of {TRIES}", tries + 1);
        backoff(tries);
    }
}

/// An LFS file's ETag is the sha256 of its bytes: a resumed download must hash to it.
fn verify(part: &Path, meta: &Meta) -> Result<()> {
    use sha2::Digest;
    let is_sha256 = meta.etag.len() == 64 && meta.etag.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_sha256 {
        return Ok(());
    }
    let mut f = std::fs::File::open(part).with_context(|| format!("reading {}", part.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut f, &mut hasher).with_context(|| format!("reading {}", part.display()))?;
    let got = format!("{:x}", hasher.finalize());
    if !got.eq_ignore_ascii_case(&meta.etag) {
        anyhow::bail!("the downloaded bytes hash to sha256 {got}, not {}", meta.etag);
    }
    Ok(())
}

/// A failure in the user's terms: what happened to which repository, and what to do.
pub fn explain(f: &Failure, repo: &Repo, client: &Client) -> anyhow::Error {
    let (kind, id, endpoint) = (repo.kind.noun(), &repo.id, &client.endpoint);
    let token_note = |what: &str| match &client.token {
        Some(t) => format!(" (the token from {} was sent and {what})", t.from),
        None => String::new(),
    };
    let msg = match f {
        Failure::Status { status: 401, message, .. } if message.contains("Invalid credentials") => format!(
            "the Hub at {endpoint} refused the token from {} as invalid credentials: set HF_TOKEN to a valid token",
            client.token.as_ref().map_or("the request", |t| t.from.as_str())
        ),
        Failure::Status { code, .. } if code == "GatedRepo" => format!(
            "{kind} {id} is gated: accept its terms at {} while logged in, then set HF_TOKEN to a token of that account{}",
            repo.kind.page(endpoint, id),
            token_note("its account has not been granted access")
        ),
        Failure::Status { code, .. } if code == "RevisionNotFound" => {
            format!("{kind} {id} has no revision {:?} (a branch, tag or commit id): check --revision", repo.revision)
        }
        Failure::Status { status: 401 | 404, .. } => format!(
            "{kind} {id} was not found on the Hub at {endpoint}: check the id; if it is private or gated, accept its \
             terms on the Hub and set HF_TOKEN{}{}",
            token_note("gives no access to it"),
            super::suggest::hint(repo, false)
        ),
        Failure::Status { status: 403, message, .. } => format!(
            "the Hub at {endpoint} forbids reading {kind} {id} (403{}){}: use a token with read access to it",
            if message.is_empty() { String::new() } else { format!(": {message}") },
            token_note("does not allow it")
        ),
        Failure::Status { status, message, .. } => {
            format!("the Hub at {endpoint} answered {status} {message} for {kind} {id} after {TRIES} tries; try again later")
        }
        Failure::TimedOut => format!(
            "the Hub at {endpoint} did not answer within {} s, {TRIES} tries (set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)",
            client.timeout.as_secs_f64()
        ),
        Failure::Broken(detail) => format!("the transfer from the Hub at {endpoint} failed after {TRIES} tries: {detail}"),
        Failure::Unreachable(detail) => format!("cannot reach the Hub at {endpoint} ({detail}){}", offline_hint(repo)),
    };
    anyhow::anyhow!(msg)
}

/// Only when the cache holds something of this revision can working offline help.
fn offline_hint(repo: &Repo) -> String {
    let cache = RepoCache::new(repo.kind, &repo.id);
    if cache.has_snapshot(&repo.revision) {
        format!(
            "; the cache at {} holds {}: set HF_HUB_OFFLINE=1 to use only what it has",
            cache.root().display(),
            repo.id
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths_stay_inside_the_repository() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b"] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        for good in ["config.json", "split/train-00000-of-00001.parquet", "a.b/c..d"] {
            check_relative(good).unwrap();
        }
    }
}
