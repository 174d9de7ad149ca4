//! `emotune serve` as a drop-in for text-embeddings-inference: the clients people use
//! (Hugging Face's `InferenceClient`, curl), TEI's routes and headers, the Inference API's
//! `parameters`, `/tokenize` and `/decode`, and the OpenAPI description against the README.

mod common;

use common::server::Server;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;

const KEY: &str = "test-key-5d1c";

/// The scores `emotune predict` gives `text`, by label.
fn cli_scores(model: &str, text: &str, field: &str) -> Value {
    let out = Command::new(bin())
        .args(["predict", "--format", "jsonl", "--logits", "-m", fixture(model).to_str().unwrap(), text])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    match field {
        "scores" => line["scores"].clone(),
        _ => {
            let config: Value =
                serde_json::from_str(&std::fs::read_to_string(fixture(model).join("config.json")).unwrap()).unwrap();
            let names = &config["id2label"];
            let logits = line["logits"].as_array().unwrap();
            (0..logits.len()).map(|i| (names[i.to_string()].as_str().unwrap().to_string(), logits[i].clone())).collect()
        }
    }
}

/// Runs Python with `huggingface_hub` (scripts/test installs it) and parses its stdout as JSON.
/// `HF_HUB_OFFLINE` is lifted for it: the library refuses every URL in offline mode, even a
/// server on loopback, and loopback is all it calls here.
fn python(script: &str, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3 with huggingface_hub (scripts/test installs it): {e}"));
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

const CLIENT: &str = r#"
import json, sys
from huggingface_hub import InferenceClient
url, key, text = sys.argv[1:4]
c = InferenceClient(url, api_key=key)
def rows(r): return [[e.label, e.score] for e in r]
print(json.dumps({
    "default": rows(c.text_classification(text)),
    "top2": rows(c.text_classification(text, top_k=2)),
    "logits": rows(c.text_classification(text, function_to_apply="none")),
}))
"#;

/// Checks ranked `[label, score]` pairs against the CLI's scores.
fn assert_same(rows: &Value, want: &Value, n: usize) {
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), n, "{rows:?}");
    let scores: Vec<f64> = rows.iter().map(|r| r[1].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked: {scores:?}");
    for r in rows {
        let w = want[r[0].as_str().unwrap()].as_f64().unwrap();
        assert!((r[1].as_f64().unwrap() - w).abs() < 1e-5, "{r} vs {w}");
    }
}

#[test]
fn inference_client_gets_the_models_answers() {
    for (model, labels) in [("tiny-distilbert", 6), ("tiny-bert-multilabel", 28)] {
        let s = Server::start_model(model, &["--api-key", KEY]);
        let text = "thanks, that made my day";
        let got = python(CLIENT, &[&s.base, KEY, text]);
        let probs = cli_scores(model, text, "scores");
        assert_same(&got["default"], &probs, labels);
        assert_same(&got["top2"], &probs, 2);
        assert_same(&got["logits"], &cli_scores(model, text, "logits"), labels);
        let metrics = s.call("GET", "/metrics", &[("Authorization", &format!("Bearer {KEY}"))], None).body;
        let posts = "emotune_requests_total{endpoint=\"/\",status=\"200\"} 3";
        assert!(metrics.contains(posts), "the client posts to the base URL:\n{metrics}");
    }
}

#[test]
fn curl_gets_tei_answers_on_every_predict_route() {
    for (model, labels) in [("tiny-distilbert", 6), ("tiny-bert-multilabel", 28)] {
        let s = Server::start_model(model, &["--api-key", KEY]);
        let text = "i am scared";
        let body = json!({"inputs": [text, "i feel so happy today"]}).to_string();
        let auth = format!("Authorization: Bearer {KEY}");
        for path in ["/", "/predict", "/invocations"] {
            let out = Command::new("curl")
                .args(["-sS", "-f", "-H", "Content-Type: application/json", "-H", &auth, "-d", &body, &s.url(path)])
                .output()
                .expect("curl");
            assert!(out.status.success(), "{model} {path}: {}", String::from_utf8_lossy(&out.stderr));
            let got: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(got.as_array().unwrap().len(), 2);
            let first: Vec<Value> =
                got[0].as_array().unwrap().iter().map(|p| json!([p["label"], p["score"]])).collect();
            assert_same(&Value::Array(first), &cli_scores(model, text, "scores"), labels);
        }
        for path in ["/health", "/ping"] {
            let out = Command::new("curl").args(["-sS", "-f", &s.url(path)]).output().unwrap();
            assert!(out.status.success(), "{path} needs no key");
        }
    }
}

#[test]
fn tei_headers_count_characters_and_tokens() {
    let s = Server::start(&[]);
    let text = "i feel so happy today";
    let r = s.call(
        "POST",
        "/predict",
        &[("Content-Type", "application/json")],
        Some(json!({"inputs": [text, "ok"]}).to_string().as_bytes()),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-compute-type"), Some("cpu"));
    assert_eq!(r.header("x-compute-characters"), Some((text.len() + 2).to_string().as_str()));
    let tokens = s.post_raw("/tokenize", &json!({"inputs": [text, "ok"]}).to_string()).1;
    let tokens: Value = serde_json::from_str(&tokens).unwrap();
    let count: usize = tokens.as_array().unwrap().iter().map(|t| t.as_array().unwrap().len()).sum();
    assert_eq!(r.header("x-compute-tokens"), Some(count.to_string().as_str()));
    let ms = |name: &str| -> u64 { r.header(name).unwrap_or_else(|| panic!("no {name}")).parse().unwrap() };
    let parts = ms("x-tokenization-time") + ms("x-queue-time") + ms("x-inference-time");
    assert!(parts <= ms("x-total-time") + 3, "the parts fit in the total");
    assert_eq!(ms("x-compute-time"), ms("x-total-time"));
}

#[test]
fn parameters_follow_the_inference_api() {
    let s = Server::start_model("tiny-bert-multilabel", &[]);
    let (code, v) = s.predict(json!({"inputs": "wow", "parameters": {}}));
    assert_eq!(code, 200);
    assert_eq!(v.as_array().unwrap().len(), 1, "a list per input: {v}");
    assert_eq!(v[0].as_array().unwrap().len(), 28);
    let (_, v) =
        s.predict(json!({"inputs": ["wow", "sad"], "parameters": {"top_k": 3, "function_to_apply": "softmax"}}));
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1].as_array().unwrap().len(), 3);
    let (_, all) = s.predict(json!({"inputs": "wow", "parameters": {"function_to_apply": "softmax"}}));
    let total: f64 = all[0].as_array().unwrap().iter().map(|x| x["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5, "softmax over a multi-label model's logits sums to one: {total}");
    let (_, none) = s.predict(json!({"inputs": "wow", "parameters": {"function_to_apply": "none"}}));
    let (_, raw) = s.predict(json!({"inputs": "wow", "raw_scores": true}));
    assert_eq!(none[0], raw);
    for (bad, needle) in [
        (json!({"inputs": "wow", "parameters": {"top_k": 0}}), "top_k"),
        (json!({"inputs": "wow", "parameters": {"temperature": 2}}), "temperature"),
        (json!({"inputs": "wow", "parameters": {"function_to_apply": "relu"}}), "relu"),
        (json!({"inputs": "wow", "truncation_direction": "Left"}), "Left"),
    ] {
        let (code, body) = s.predict(bad.clone());
        assert_eq!(code, 422, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{bad}: {body}");
    }
}

#[test]
fn tokenize_and_decode_as_tei() {
    let s = Server::start(&[]);
    let (code, body) = s.post_raw("/tokenize", r#"{"inputs": "Héllo wörld"}"#);
    assert_eq!(code, 200, "{body}");
    let toks: Value = serde_json::from_str(&body).unwrap();
    let toks = toks[0].as_array().unwrap();
    assert_eq!(toks.first().unwrap()["special"], true);
    assert_eq!(toks.first().unwrap()["start"], Value::Null);
    let word = &toks[1];
    assert_eq!(word["special"], false);
    let (a, b) = (word["start"].as_u64().unwrap() as usize, word["stop"].as_u64().unwrap() as usize);
    let chars: String = "Héllo wörld".chars().skip(a).take(b - a).collect();
    assert_eq!(word["text"].as_str().unwrap(), chars, "offsets count characters");
    let ids: Vec<u64> = toks.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let (code, body) = s.post_raw("/decode", &json!({"ids": ids}).to_string());
    assert_eq!(code, 200, "{body}");
    let decoded: Value = serde_json::from_str(&body).unwrap();
    assert!(decoded[0].as_str().unwrap().starts_with("hello"), "{decoded}");
    let (code, body) = s.post_raw("/tokenize", r#"{"inputs": "hi", "add_special_tokens": false}"#);
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()[0].as_array().unwrap().len()), (200, 1));
    let (code, body) = s.post_raw("/decode", r#"{"ids": [101, 99999999]}"#);
    assert_eq!(code, 422);
    assert!(body.contains("99999999"), "{body}");
    assert_eq!(s.post_raw("/decode", r#"{"ids": [[]]}"#).0, 200);
    assert_eq!(s.post_raw("/tokenize", r#"{"inputs": []}"#).0, 400);
}

/// `METHOD /path` pairs of the OpenAPI description.
fn openapi_routes(doc: &Value) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes
}

/// `METHOD /path` pairs listed in the README's route table (between its markers).
fn readme_routes() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- routes -->").expect("README: <!-- routes --> marker");
    let end = readme.find("<!-- /routes -->").expect("README: <!-- /routes --> marker");
    let mut routes = BTreeSet::new();
    for line in readme[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('`').nth(1).unwrap();
        routes.insert(cell.to_string());
    }
    routes
}

#[test]
fn openapi_describes_every_route_and_the_readme_lists_them() {
    let s = Server::start(&["--api-key", KEY]);
    let auth = format!("Bearer {KEY}");
    let r = s.call("GET", "/api-doc/openapi.json", &[("Authorization", &auth)], None);
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    let routes = openapi_routes(&doc);
    for route in &routes {
        let (method, path) = route.split_once(' ').unwrap();
        let body = (method == "POST").then_some(&b"{}"[..]);
        let r = s.call(method, path, &[("Authorization", &auth), ("Content-Type", "application/json")], body);
        assert!(r.status != 404 && r.status != 405, "{route} is described but not served: {}", r.status);
    }
    assert_eq!(readme_routes(), routes, "the README's route table and /api-doc/openapi.json differ");
}
