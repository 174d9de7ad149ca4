//! An `emotune serve` child process on a free loopback port, and plain HTTP calls to it.

use super::{bin, fixture};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    /// The server's stderr, in a file so a chatty server never blocks on a full pipe.
    log: tempfile::NamedTempFile,
}

/// A response: status, headers (lower-case names) and body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, self.body))
    }
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_model("tiny-distilbert", extra)
    }

    pub fn start_model(fixture_name: &str, extra: &[&str]) -> Server {
        Server::start_path(&fixture(fixture_name), extra)
    }

    pub fn start_path(model: &Path, extra: &[&str]) -> Server {
        Server::start_with(model, extra, &[])
    }

    /// Starts a server with extra environment variables.
    pub fn start_with(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected: {line:?}"));
        Server { child, base: base.to_string(), log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `127.0.0.1:port`, for raw sockets.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// The server's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Any request; `headers` are added as given.
    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        let mut req = ureq::request(method, &self.url(path));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let r = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path} failed: {e}"),
        };
        let headers = r.headers_names().into_iter().map(|n| (n.to_lowercase(), r.header(&n).unwrap().to_string()));
        let headers = headers.collect();
        Reply { status: r.status(), headers, body: r.into_string().unwrap() }
    }

    /// POSTs JSON text; returns (status, body).
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, String) {
        let r = self.call("POST", path, &[("Content-Type", "application/json")], Some(body.as_bytes()));
        (r.status, r.body)
    }

    pub fn predict(&self, body: Value) -> (u16, Value) {
        let (code, text) = self.post_raw("/predict", &body.to_string());
        (code, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.call("GET", path, &[], None);
        (r.status, r.body)
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(|v| v.parse().unwrap()))
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit()
    }

    pub fn signal_term(&self) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
    }

    /// Waits (at most 20 s) for the server to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
