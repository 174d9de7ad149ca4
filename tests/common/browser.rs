//! Headless Chromium driven through chromedriver (Debian's chromium and chromium-driver, which
//! `scripts/test` installs) with a minimal W3C WebDriver client, for the page tests.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";

/// One browser session; closed, and its driver stopped, when dropped.
pub struct Browser {
    base: String,
    sid: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// A WebDriver command's `value`.
fn wd(base: &str, method: &str, path: &str, body: Value) -> Value {
    let url = format!("{base}{path}");
    let r = match method {
        "POST" => ureq::post(&url).send_json(body),
        "DELETE" => ureq::delete(&url).call(),
        _ => ureq::get(&url).call(),
    };
    match r {
        Ok(r) => r.into_json::<Value>().unwrap()["value"].clone(),
        Err(ureq::Error::Status(c, r)) => panic!("webdriver {method} {path}: {c} {}", r.into_string().unwrap()),
        Err(e) => panic!("webdriver {method} {path}: {e}"),
    }
}

impl Browser {
    /// A headless browser showing `url`.
    pub fn open(url: &str) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(DRIVER).exists(),
            "this test needs Debian's chromium and chromium-driver (scripts/test installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.path().display())]}}}});
        let session = wd(&base, "POST", "/session", caps);
        let sid = session["sessionId"].as_str().unwrap().to_string();
        let b = Browser { base, sid, driver, _profile: profile };
        b.post("/url", json!({"url": url}));
        b
    }

    fn post(&self, path: &str, body: Value) -> Value {
        wd(&self.base, "POST", &format!("/session/{}{path}", self.sid), body)
    }

    /// The element id of the first match of `css`.
    pub fn find(&self, css: &str) -> String {
        let e = self.post("/element", json!({"using": "css selector", "value": css}));
        e.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.post(&format!("/element/{e}/value"), json!({ "text": text }));
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.post(&format!("/element/{e}/click"), json!({}));
    }

    /// What the script `js` returns.
    pub fn script(&self, js: &str) -> Value {
        self.post("/execute/sync", json!({"script": js, "args": []}))
    }

    /// Polls `js` until `done` accepts its value, for up to `secs` seconds; the last value.
    pub fn wait_for(&self, js: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.script(js);
            if done(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as shown.
    pub fn screenshot(&self) -> Vec<u8> {
        let png = wd(&self.base, "GET", &format!("/session/{}/screenshot", self.sid), json!({}));
        base64_decode(png.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.sid)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let table = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= table(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
