//! A Hub-compatible HTTP server on loopback for the download tests, written from the Hub's HTTP
//! behaviour as `huggingface_hub` relies on it (and checked against `huggingface_hub` itself in
//! tests/hub.rs):
//!
//! - `HEAD|GET /{id}/resolve/{rev}/{path}` (datasets under `/datasets/`): small files answered
//!   with `ETag` (a git-like oid) and `X-Repo-Commit`; large ("LFS") files redirected (302) to a
//!   second host, the CDN, with `X-Linked-Etag` (their sha256) and `X-Linked-Size`; `Range` answered
//!   with 206.
//! - `GET /api/{models,datasets}/{id}[/revision/{rev}]`: `sha` and `siblings`;
//!   `GET /api/{models,datasets}/{id}/tree/{rev}`: the file list `snapshot_download` reads.
//! - Refusals as the Hub words them: an unknown or private repository answers an anonymous user
//!   401 `RepoNotFound` (an authenticated one 404), a gated one 401 (anonymous) or 403 (no
//!   access) `GatedRepo`, a bad token 401 "Invalid credentials in Authorization header", an
//!   unknown revision 404 `RevisionNotFound`, an unknown file 404 `EntryNotFound`.
//!
//! Every request is logged (which host, method, path, Authorization, Range); downloads can be
//! cut half-way once or stalled, to test resuming and timeouts.

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A token with access to every repository, and one that is valid but has no access to private
/// or gated ones.
pub const GOOD_TOKEN: &str = "hf_test_good_token";
pub const OTHER_TOKEN: &str = "hf_test_other_token";
/// A fine-grained token without the read permission: 403 on everything not public.
pub const NO_READ_TOKEN: &str = "hf_test_no_read_token";

#[derive(Clone, Copy, PartialEq)]
pub enum Access {
    Public,
    Private,
    Gated,
}

pub struct HubFile {
    pub path: String,
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
    lfs: bool,
}

struct Revision {
    name: String,
    commit: String,
    files: Vec<HubFile>,
}

pub struct HubRepo {
    kind: &'static str,
    pub id: String,
    access: Access,
    revisions: Vec<Revision>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl HubRepo {
    /// A repository whose `main` holds the files of `dir` (recursively). `kind`: "models" or
    /// "datasets".
    pub fn from_dir(kind: &'static str, id: &str, dir: &Path, access: Access) -> HubRepo {
        let mut repo = HubRepo { kind, id: id.to_string(), access, revisions: Vec::new() };
        repo.add_revision("main", dir);
        repo
    }

    pub fn add_revision(&mut self, name: &str, dir: &Path) -> &mut Self {
        let commit = sha256_hex(format!("{}@{name}", self.id).as_bytes())[..40].to_string();
        let mut files = Vec::new();
        collect(dir, dir, &mut files);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        self.revisions.push(Revision { name: name.to_string(), commit, files });
        self
    }

    pub fn commit(&self, revision: &str) -> String {
        self.revisions.iter().find(|r| r.name == revision).unwrap().commit.clone()
    }

    pub fn file(&self, revision: &str, path: &str) -> &HubFile {
        let rev = self.revisions.iter().find(|r| r.name == revision).unwrap();
        rev.files.iter().find(|f| f.path == path).unwrap()
    }

    pub fn file_count(&self, revision: &str) -> usize {
        self.revisions.iter().find(|r| r.name == revision).unwrap().files.len()
    }

    fn revision(&self, rev: &str) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.name == rev || r.commit == rev)
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<HubFile>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        // As on the Hub: weights and data are LFS files, small text files are not.
        let lfs = bytes.len() > 100_000 || rel.ends_with(".safetensors") || rel.ends_with(".parquet");
        out.push(HubFile { path: rel, sha256: sha256_hex(&bytes), bytes: Arc::new(bytes), lfs });
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub cdn: bool,
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
}

#[derive(Default)]
struct Faults {
    cut_once: HashSet<String>,
    stall: HashSet<String>,
}

struct Shared {
    repos: Vec<HubRepo>,
    log: Mutex<Vec<Logged>>,
    faults: Mutex<Faults>,
    cdn: String,
}

pub struct HubServer {
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl HubServer {
    pub fn start(repos: Vec<HubRepo>) -> HubServer {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn_url = format!("http://127.0.0.1:{}", cdn.local_addr().unwrap().port());
        let shared = Arc::new(Shared { repos, log: Mutex::default(), faults: Mutex::default(), cdn: cdn_url });
        for (listener, is_cdn) in [(hub.try_clone().unwrap(), false), (cdn, true)] {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let shared = shared.clone();
                    std::thread::spawn(move || handle(stream, &shared, is_cdn));
                }
            });
        }
        HubServer { endpoint: format!("http://127.0.0.1:{}", hub.local_addr().unwrap().port()), shared }
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear()
    }

    /// The next download of the file with this sha256 stops half-way (the connection closes).
    pub fn cut_next_download(&self, sha256: &str) {
        self.shared.faults.lock().unwrap().cut_once.insert(sha256.to_string());
    }

    /// Every download of the file with this sha256 sends a quarter of it, then nothing.
    pub fn stall_downloads(&self, sha256: &str) {
        self.shared.faults.lock().unwrap().stall.insert(sha256.to_string());
    }

    pub fn clear_faults(&self) {
        *self.shared.faults.lock().unwrap() = Faults::default();
    }

    pub fn repo(&self, id: &str) -> &HubRepo {
        self.shared.repos.iter().find(|r| r.id == id).unwrap()
    }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    range: Option<String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut req = Request { method, path: target, authorization: None, range: None };
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => req.authorization = Some(value.trim().to_string()),
            "range" => req.range = Some(value.trim().to_string()),
            _ => {}
        }
    }
    Some(req)
}

/// An answer: status, headers, body (not sent for HEAD).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    /// Only this part of `body` is sent (a Range answer).
    from: usize,
    fault: Option<Fault>,
}

#[derive(Clone, Copy)]
enum Fault {
    Cut,
    Stall,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: Arc::new(Vec::new()), from: 0, fault: None }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn json(value: serde_json::Value) -> Reply {
        let mut r = Reply::new(200).header("Content-Type", "application/json");
        r.body = Arc::new(value.to_string().into_bytes());
        r
    }

    fn error(status: u16, code: &str, message: &str) -> Reply {
        let mut r = Reply::new(status).header("X-Error-Message", message).header("Content-Type", "application/json");
        if !code.is_empty() {
            r = r.header("X-Error-Code", code);
        }
        r.body = Arc::new(serde_json::json!({ "error": message }).to_string().into_bytes());
        r
    }
}

fn handle(mut stream: TcpStream, shared: &Shared, cdn: bool) {
    let Some(req) = read_request(&stream) else { return };
    shared.log.lock().unwrap().push(Logged {
        cdn,
        method: req.method.clone(),
        path: req.path.clone(),
        authorization: req.authorization.clone(),
        range: req.range.clone(),
    });
    let reply = if cdn { cdn_reply(shared, &req) } else { hub_reply(shared, &req) };
    send(&mut stream, &req, reply);
}

fn send(stream: &mut TcpStream, req: &Request, reply: Reply) {
    let body = &reply.body[reply.from.min(reply.body.len())..];
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    if stream.write_all(head.as_bytes()).is_err() || req.method == "HEAD" {
        return;
    }
    match reply.fault {
        None => {
            let _ = stream.write_all(body);
        }
        Some(Fault::Cut) => {
            let _ = stream.write_all(&body[..body.len() / 2]);
        }
        Some(Fault::Stall) => {
            let _ = stream.write_all(&body[..body.len() / 4]);
            let _ = stream.flush();
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

fn cdn_reply(shared: &Shared, req: &Request) -> Reply {
    let sha = req.path.trim_start_matches("/blobs/").split('?').next().unwrap_or_default();
    let file = shared.repos.iter().flat_map(|r| &r.revisions).flat_map(|r| &r.files).find(|f| f.sha256 == sha);
    match file {
        Some(f) => bytes_reply(shared, req, f),
        None => Reply::error(404, "", "no such blob"),
    }
}

/// The file's bytes, or the part a `Range: bytes=N-` asks for, with any fault set for it.
fn bytes_reply(shared: &Shared, req: &Request, f: &HubFile) -> Reply {
    let len = f.bytes.len();
    let mut r = Reply::new(200).header("Accept-Ranges", "bytes");
    if let Some(from) = req.range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')) {
        let from: usize = from.parse().unwrap_or(usize::MAX);
        if from >= len {
            return Reply::new(416).header("Content-Range", format!("bytes */{len}"));
        }
        r = Reply::new(206).header("Content-Range", format!("bytes {from}-{}/{len}", len - 1));
        r.from = from;
    }
    if req.method == "GET" {
        let mut faults = shared.faults.lock().unwrap();
        if faults.stall.contains(&f.sha256) {
            r.fault = Some(Fault::Stall);
        } else if faults.cut_once.remove(&f.sha256) {
            r.fault = Some(Fault::Cut);
        }
    }
    r.body = f.bytes.clone();
    r
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hub_reply(shared: &Shared, req: &Request) -> Reply {
    let path = req.path.split('?').next().unwrap_or_default();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", kind @ ("models" | "datasets"), org, name, rest @ ..] => {
            let id = format!("{org}/{name}");
            with_repo(shared, req, kind, &id, |repo| api_reply(repo, rest))
        }
        ["datasets", org, name, "resolve", rev, file @ ..] => {
            let id = format!("{org}/{name}");
            with_repo(shared, req, "datasets", &id, |repo| resolve_reply(shared, req, repo, rev, &file.join("/")))
        }
        [org, name, "resolve", rev, file @ ..] => {
            let id = format!("{org}/{name}");
            with_repo(shared, req, "models", &id, |repo| resolve_reply(shared, req, repo, rev, &file.join("/")))
        }
        _ => Reply::error(404, "", "Not Found"),
    }
}

/// Checks the token against the repository's access, as the Hub does, before `then`.
fn with_repo(shared: &Shared, req: &Request, kind: &str, id: &str, then: impl FnOnce(&HubRepo) -> Reply) -> Reply {
    let token = req.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer "));
    if token.is_some_and(|t| ![GOOD_TOKEN, OTHER_TOKEN, NO_READ_TOKEN].contains(&t)) {
        return Reply::error(401, "", "Invalid credentials in Authorization header");
    }
    let repo = shared.repos.iter().find(|r| r.kind == kind && r.id == id);
    let not_found = || {
        let status = if token.is_some() { 404 } else { 401 };
        Reply::error(status, "RepoNotFound", "Repository not found")
    };
    match repo {
        None => not_found(),
        Some(r) if r.access != Access::Public && token == Some(NO_READ_TOKEN) => {
            Reply::error(403, "", "This fine-grained token does not have the read permission")
        }
        Some(r) if r.access == Access::Private && token != Some(GOOD_TOKEN) => not_found(),
        Some(r) if r.access == Access::Gated && token.is_none() => Reply::error(
            401,
            "GatedRepo",
            &format!("Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."),
        ),
        Some(r) if r.access == Access::Gated && token != Some(GOOD_TOKEN) => Reply::error(
            403,
            "GatedRepo",
            &format!("Access to model {id} is restricted and you are not in the authorized list."),
        ),
        Some(r) => then(r),
    }
}

fn api_reply(repo: &HubRepo, rest: &[&str]) -> Reply {
    let (rev, tree) = match rest {
        [] => ("main".to_string(), false),
        ["revision", rev] => (percent_decode(rev), false),
        ["tree", rev, ..] => (percent_decode(rev), true),
        _ => return Reply::error(404, "", "Not Found"),
    };
    let Some(r) = repo.revision(&rev) else {
        return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    };
    if tree {
        let entries: Vec<_> = r.files.iter().map(tree_entry).collect();
        return Reply::json(serde_json::Value::Array(entries));
    }
    let siblings: Vec<_> = r.files.iter().map(|f| serde_json::json!({ "rfilename": f.path })).collect();
    Reply::json(
        serde_json::json!({ "id": repo.id, "sha": r.commit, "private": repo.access == Access::Private, "siblings": siblings }),
    )
}

fn tree_entry(f: &HubFile) -> serde_json::Value {
    let mut e = serde_json::json!({ "type": "file", "oid": &f.sha256[..40], "size": f.bytes.len(), "path": f.path });
    if f.lfs {
        e["lfs"] = serde_json::json!({ "oid": f.sha256, "size": f.bytes.len(), "pointerSize": 134 });
    }
    e
}

fn resolve_reply(shared: &Shared, req: &Request, repo: &HubRepo, rev: &str, file: &str) -> Reply {
    let rev = percent_decode(rev);
    let file = percent_decode(file);
    let Some(r) = repo.revision(&rev) else {
        return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    };
    let Some(f) = r.files.iter().find(|f| f.path == file) else {
        return Reply::error(404, "EntryNotFound", &format!("{file} does not exist on \"{rev}\""))
            .header("X-Repo-Commit", r.commit.as_str());
    };
    let common = |reply: Reply| {
        reply.header("X-Repo-Commit", r.commit.as_str()).header("ETag", format!("\"{}\"", &f.sha256[..40]))
    };
    if f.lfs {
        return common(Reply::new(302))
            .header("Location", format!("{}/blobs/{}", shared.cdn, f.sha256))
            .header("X-Linked-Etag", format!("\"{}\"", f.sha256))
            .header("X-Linked-Size", f.bytes.len().to_string());
    }
    common(bytes_reply(shared, req, f))
}
