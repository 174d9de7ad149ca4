//! The server's OpenAPI description against what the server does: schemathesis (installed by
//! scripts/test) generates requests from `/api-doc/openapi.json` and runs every check it has,
//! and without the key every protected route answers 401 while the open ones serve.

mod common;

use common::server::Server;
use serde_json::Value;
use std::process::Command;

const KEY: &str = "test-key-0a9f";

/// The seed and the number of examples per operation: fixed, so a run is repeatable and bounded
/// (about 700 requests, 10 s here).
const SEED: &str = "1";
const EXAMPLES: &str = "60";

#[test]
fn schemathesis_finds_nothing_the_description_does_not_say() {
    let s = Server::start(&["--api-key", KEY]);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let out = Command::new("schemathesis")
        .args(["--config-file", config, "run", &s.url("/api-doc/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {KEY}"), "--checks", "all"])
        .args(["--max-examples", EXAMPLES, "--seed", SEED, "--no-color"])
        .output()
        .unwrap_or_else(|e| panic!("this test needs schemathesis on PATH (scripts/test installs it with pip): {e}"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("Tested: 11"), "every operation is tested:\n{report}");
    assert!(!report.contains(" 0 generated"), "requests were generated:\n{report}");
}

#[test]
fn without_the_key_protected_routes_answer_401_and_open_ones_serve() {
    let s = Server::start(&["--api-key", KEY]);
    let doc = s.call("GET", "/api-doc/openapi.json", &[("Authorization", &format!("Bearer {KEY}"))], None).json();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            // An operation with `security: [{}]` needs no key; the rest inherit the document's.
            let open = op["security"].as_array().is_some_and(|s| s.iter().all(|r| r.as_object().unwrap().is_empty()));
            let body = (method == "post").then_some(&br#"{"inputs": "a fine day", "ids": [1]}"#[..]);
            let r = s.call(&method.to_uppercase(), path, &[("Content-Type", "application/json")], body);
            if open {
                assert_eq!(r.status, 200, "{method} {path} is documented as open");
            } else {
                assert_eq!(r.status, 401, "{method} {path} is documented as protected: {}", r.body);
                assert!(op["responses"]["401"].is_object(), "{method} {path} documents its 401");
                let e: Value = serde_json::from_str(&r.body).unwrap();
                assert_eq!(e["error_type"], "Unauthorized");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12, "every operation of the description was called");
}
