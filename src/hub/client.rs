//! The Hub's HTTP API as `huggingface_hub` uses it: a file's metadata from a HEAD on its
//! `resolve` URL (commit, ETag, size, where large files are redirected), its bytes from a GET
//! resumed with `Range`, a repository's files from `/api/{models,datasets}/{id}/revision/{rev}`.
//!
//! Written on `ureq` rather than through the `hf-hub` crate, whose client cannot be given
//! timeouts, reads only the token file (not `HF_TOKEN`), sends the token to the host large files
//! are redirected to, and reports every refusal as the same status-code string.
//!
//! The token (from `HF_TOKEN`, then the file at `HF_TOKEN_PATH`, then `$HF_HOME/token`) goes to
//! the Hub's own origin only, never to a redirect host, and is never printed.

use super::repo::Repo;
use anyhow::Result;
use std::io::Read;
use std::time::Duration;

/// Tries of one request that fails for a reason that may pass (a timeout, a dropped connection,
/// a 5xx or 429 answer), as `huggingface_hub`; waits 1, 2, 4, 8 s between them.
pub const TRIES: u32 = 5;

/// Why the Hub could not be reached, once that happened in this process: later lookups use the
/// cache without asking again (and without a warning per file).
static UNREACHABLE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Records that the Hub could not be reached; true the first time (the one to warn about).
pub fn note_unreachable(why: &Failure) -> bool {
    let mut down = UNREACHABLE.lock().unwrap_or_else(|e| e.into_inner());
    let first = down.is_none();
    if first {
        *down = Some(match why {
            Failure::Unreachable(detail) => detail.clone(),
            other => format!("{other:?}"),
        });
    }
    first
}

/// The failure that made the Hub unreachable earlier in this process, if one did.
pub fn unreachable() -> Option<Failure> {
    UNREACHABLE.lock().unwrap_or_else(|e| e.into_inner()).clone().map(Failure::Unreachable)
}

/// Where the token came from, to name it in errors (never its value).
#[derive(Clone)]
pub struct Token {
    secret: String,
    pub from: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(from {})", self.from)
    }
}

/// Why a request failed, before it is explained in the user's terms.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An HTTP error status, with the Hub's `X-Error-Code` and `X-Error-Message`.
    Status {
        status: u16,
        code: String,
        message: String,
        commit: Option<String>,
    },
    /// No connection could be made (refused, no route, name not resolved).
    Unreachable(String),
    TimedOut,
    /// The connection broke during the exchange.
    Broken(String),
}

/// What a HEAD on a file's `resolve` URL answers.
#[derive(Debug)]
pub enum Head {
    Found(Meta),
    /// The Hub says there is no such file (at this commit, when it names one).
    Missing {
        commit: Option<String>,
    },
}

/// What a HEAD on a file's `resolve` URL says about an existing file.
#[derive(Debug, Clone)]
pub struct Meta {
    pub commit: String,
    pub etag: String,
    pub size: Option<u64>,
    /// Where the bytes are: the `resolve` URL itself or the host large files are redirected to.
    pub location: String,
}

#[derive(Debug)]
pub struct Client {
    pub endpoint: String,
    pub token: Option<Token>,
    pub timeout: Duration,
    agent: ureq::Agent,
}

/// The process's client, built on first use.
static SHARED: std::sync::OnceLock<Client> = std::sync::OnceLock::new();

impl Client {
    /// The client of this process: built from the environment once, so the token file is read
    /// once and connections to the Hub are reused from one file to the next.
    pub fn shared() -> Result<&'static Client> {
        if let Some(c) = SHARED.get() {
            return Ok(c);
        }
        let built = Client::from_env()?;
        Ok(SHARED.get_or_init(|| built))
    }

    /// The client `HF_ENDPOINT`, the token variables and `HF_HUB_DOWNLOAD_TIMEOUT` describe.
    pub fn from_env() -> Result<Client> {
        let timeout = download_timeout()?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            .redirects(0)
            .user_agent(concat!("emotune/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client { endpoint: endpoint(), token: token()?, timeout, agent })
    }

    fn resolve_url(&self, repo: &Repo, file: &str) -> String {
        let quoted: Vec<String> = file.split('/').map(quote).collect();
        format!(
            "{}/{}{}/resolve/{}/{}",
            self.endpoint,
            repo.kind.url_prefix(),
            repo.id,
            quote(&repo.revision),
            quoted.join("/")
        )
    }

    /// One request; `Authorization` only when `url` is on the Hub's own origin.
    fn request(&self, method: &str, url: &str, range_from: u64) -> Result<ureq::Response, Failure> {
        let mut req = self.agent.request(method, url).set("Accept-Encoding", "identity");
        if let Some(t) = self.token.as_ref().filter(|_| origin(url) == origin(&self.endpoint)) {
            req = req.set("Authorization", &format!("Bearer {}", t.secret));
        }
        if range_from > 0 {
            req = req.set("Range", &format!("bytes={range_from}-"));
        }
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, r)) => Err(status_failure(status, &r)),
            Err(ureq::Error::Transport(t)) => Err(transport_failure(&t)),
        }
    }

    /// `request`, tried again (after 1, 2, 4, 8 s) while it fails for a reason that may pass.
    fn request_with_retries(&self, method: &str, url: &str, retry_transport: bool) -> Result<ureq::Response, Failure> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.request(method, url, 0) {
                Err(f) if tries < TRIES && retryable(&f, retry_transport) => backoff(tries),
                other => return other,
            }
        }
    }

    /// The metadata of `file` in `repo`, or that the Hub says the file does not exist.
    pub fn metadata(&self, repo: &Repo, file: &str) -> Result<Head, Failure> {
        let mut url = self.resolve_url(repo, file);
        for _ in 0..5 {
            let r = match self.request_with_retries("HEAD", &url, false) {
                Err(Failure::Status { status: 404, code, commit, .. }) if code == "EntryNotFound" => {
                    return Ok(Head::Missing { commit })
                }
                other => other?,
            };
            let location = r.header("Location").map(str::to_string);
            match location {
                // A renamed repository: the Hub answers with a path on its own host.
                Some(l) if (300..400).contains(&r.status()) && l.starts_with('/') => {
                    url = format!("{}{l}", origin(&self.endpoint));
                }
                _ => return meta_from(&r, &url).map(Head::Found),
            }
        }
        Err(Failure::Broken(format!("{url}: too many redirects")))
    }

    /// The commit `repo.revision` points at and every file of the repository at it.
    pub fn listing(&self, repo: &Repo) -> Result<(String, Vec<String>), Failure> {
        let url =
            format!("{}/api/{}/{}/revision/{}", self.endpoint, repo.kind.api_name(), repo.id, quote(&repo.revision));
        let r = self.request_with_retries("GET", &url, false)?;
        let body: serde_json::Value =
            serde_json::from_reader(r.into_reader()).map_err(|e| Failure::Broken(format!("{url}: {e}")))?;
        let commit = body["sha"].as_str().unwrap_or_default().to_string();
        let files =
            body["siblings"].as_array().map(|s| s.iter().filter_map(|f| f["rfilename"].as_str()).map(String::from));
        match files {
            Some(files) if super::cache::is_commit(&commit) => Ok((commit, files.collect())),
            _ => Err(Failure::Broken(format!("{url}: the answer has no commit id and file list"))),
        }
    }

    /// Appends the bytes of `meta.location` from `have` on to `out`, through `progress`.
    /// Returns how many bytes the file now holds; a failure leaves what was written (to resume).
    pub fn fetch_into(
        &self,
        meta: &Meta,
        out: &std::fs::File,
        have: u64,
        progress: &dyn Fn(u64),
    ) -> Result<u64, Failure> {
        let r = self.request("GET", &meta.location, have)?;
        let mut start = have;
        if r.status() != 206 {
            // The server sent the whole file: start again from its first byte.
            out.set_len(0).map_err(|e| Failure::Broken(e.to_string()))?;
            start = 0;
        }
        copy_body(r.into_reader(), out, start, progress)
    }
}

fn copy_body(mut body: impl Read, mut out: &std::fs::File, start: u64, progress: &dyn Fn(u64)) -> Result<u64, Failure> {
    use std::io::{Seek, SeekFrom, Write};
    out.seek(SeekFrom::Start(start)).map_err(|e| Failure::Broken(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(pos),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                return Err(Failure::TimedOut)
            }
            Err(e) => return Err(Failure::Broken(e.to_string())),
        };
        out.write_all(&buf[..n]).map_err(|e| Failure::Broken(format!("writing the download: {e}")))?;
        pos += n as u64;
        progress(pos);
    }
}

pub fn retryable(f: &Failure, transport: bool) -> bool {
    match f {
        Failure::Status { status, .. } => *status == 429 || *status >= 500,
        Failure::TimedOut | Failure::Broken(_) => transport,
        Failure::Unreachable(_) => false,
    }
}

/// Waits before try `tries + 1`: 1, 2, 4, 8 s.
pub fn backoff(tries: u32) {
    std::thread::sleep(Duration::from_secs(1 << (tries - 1).min(3)));
}

fn meta_from(r: &ureq::Response, url: &str) -> Result<Meta, Failure> {
    let header = |name: &str| r.header(name).map(str::to_string);
    let redirected = (300..400).contains(&r.status());
    let etag = header("X-Linked-Etag").or_else(|| header("ETag")).map(|e| normalise_etag(&e));
    let size = header("X-Linked-Size").or_else(|| if redirected { None } else { header("Content-Length") });
    let location = if redirected { header("Location") } else { Some(url.to_string()) };
    match (header("X-Repo-Commit"), etag, location) {
        (Some(commit), Some(etag), Some(location)) if safe_name(&etag) => {
            Ok(Meta { commit, etag, size: size.and_then(|s| s.parse().ok()), location })
        }
        _ => Err(Failure::Broken(format!("{url}: the answer lacks X-Repo-Commit, ETag or Location"))),
    }
}

/// `W/"abc"` → `abc`, as `huggingface_hub` names blobs.
fn normalise_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// An ETag becomes a file name in the cache: nothing that could leave `blobs/`.
fn safe_name(etag: &str) -> bool {
    !etag.is_empty() && etag.len() <= 128 && etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn status_failure(status: u16, r: &ureq::Response) -> Failure {
    let header = |name: &str| r.header(name).unwrap_or_default().to_string();
    let commit = r.header("X-Repo-Commit").map(str::to_string);
    Failure::Status { status, code: header("X-Error-Code"), message: header("X-Error-Message"), commit }
}

fn transport_failure(t: &ureq::Transport) -> Failure {
    use std::error::Error as _;
    let io = t.source().and_then(|s| s.downcast_ref::<std::io::Error>());
    if io.is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)) {
        return Failure::TimedOut;
    }
    let detail = t.to_string();
    match t.kind() {
        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns | ureq::ErrorKind::ProxyConnect => {
            Failure::Unreachable(detail)
        }
        _ => Failure::Broken(detail),
    }
}

/// `HF_ENDPOINT`, else the Hub, without a trailing slash.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// `HF_HUB_DOWNLOAD_TIMEOUT` in seconds (default 10, as `huggingface_hub`).
pub fn download_timeout() -> Result<Duration> {
    match std::env::var("HF_HUB_DOWNLOAD_TIMEOUT") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => anyhow::bail!("HF_HUB_DOWNLOAD_TIMEOUT={v:?}: expected a number of seconds above 0"),
        },
        _ => Ok(Duration::from_secs(10)),
    }
}

/// The token `huggingface_hub` would use: `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else
/// `$HF_HOME/token`. An empty value or file means none.
pub fn token() -> Result<Option<Token>> {
    if let Ok(v) = std::env::var("HF_TOKEN") {
        if !v.trim().is_empty() {
            return Ok(Some(Token { secret: v.trim().to_string(), from: "HF_TOKEN".into() }));
        }
    }
    let path = match std::env::var_os("HF_TOKEN_PATH").filter(|p| !p.is_empty()) {
        Some(p) => std::path::PathBuf::from(p),
        None => super::cache::hf_home().join("token"),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            Ok(Some(Token { secret: t.trim().to_string(), from: path.display().to_string() }))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading the Hub token {}", path.display()))),
    }
}

/// `scheme://host:port` of a URL: where a token may be sent.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default().to_ascii_lowercase();
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    let with_port =
        if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) { host } else { host + default_port };
    format!("{}://{with_port}", scheme.to_ascii_lowercase())
}

/// Percent-encodes one path segment (a revision like `refs/pr/1` becomes one segment).
fn quote(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(origin("https://huggingface.co/a/b"), "https://huggingface.co:443");
        assert_eq!(origin("https://huggingface.co:443/x"), origin("https://HuggingFace.co/y"));
        assert_ne!(origin("http://127.0.0.1:8000/x"), origin("http://127.0.0.1:8001/x"));
        assert_ne!(origin("https://huggingface.co/x"), origin("https://cdn-lfs.huggingface.co/x"));
        assert_ne!(origin("https://huggingface.co/x"), origin("http://huggingface.co/x"));
    }

    #[test]
    fn etags_are_normalised_and_must_be_plain_names() {
        assert_eq!(normalise_etag("W/\"abc-1\""), "abc-1");
        assert_eq!(normalise_etag("\"0123abcd\""), "0123abcd");
        assert!(!safe_name("../../evil"));
        assert!(!safe_name(""));
    }

    #[test]
    fn revisions_are_one_path_segment() {
        assert_eq!(quote("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(quote("v1.0"), "v1.0");
    }
}
