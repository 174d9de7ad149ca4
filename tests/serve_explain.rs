//! `POST /explain` over loopback: the same numbers as `predict --explain`, the limits and errors
//! of `/predict`, and the page's highlighted words in headless Chromium.

mod common;

use common::browser::Browser;
use common::server::{self, Server};
use common::*;
use serde_json::{json, Value};
use std::process::Command;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const TEXT: &str = "i feel so happy and grateful today";

fn post(s: &Server, headers: &[(&str, &str)], body: &Value) -> server::Reply {
    s.call("POST", "/explain", headers, Some(body.to_string().as_bytes()))
}

/// Scores of `what` ("words", "tokens") as float32: the server prints a float32's shortest form,
/// the CLI's JSON lines the float64 it widens to.
fn scores(e: &Value, what: &str) -> Vec<f32> {
    e[what].as_array().unwrap().iter().map(|t| t["score"].as_f64().unwrap() as f32).collect()
}

/// One text gives one object, a batch a list; the explanation is the CLI's, number for number.
#[test]
fn explain_gives_the_numbers_of_predict_explain() {
    let s = Server::start(&[]);
    let r = post(&s, &[JSON], &json!({"inputs": TEXT, "steps": 16, "target": "probability"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let one = r.json();
    let out = Command::new(bin())
        .args(["predict", "--model", fixture("tiny-distilbert").to_str().unwrap(), "--explain", "--explain-steps"])
        .args(["16", "--explain-target", "probability", "--format", "jsonl", TEXT])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["label"], cli["label"]);
    let (served, printed) = (&one["explanations"][0], &cli["explanation"]);
    for what in ["words", "tokens"] {
        assert_eq!(scores(served, what), scores(printed, what), "{what}: the same computation, bit for bit");
    }
    let text_of = |e: &Value| e["words"].as_array().unwrap().iter().map(|w| w["text"].clone()).collect::<Vec<_>>();
    assert_eq!(text_of(served), text_of(printed));
    assert_eq!((served["steps"].clone(), served["target"].clone()), (json!(16), json!("probability")));
    let r = post(&s, &[JSON], &json!({"inputs": [TEXT, "so angry"], "label": "fear"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let many = r.json();
    assert_eq!(many.as_array().unwrap().len(), 2);
    assert!(many.as_array().unwrap().iter().all(|t| t["explanations"][0]["label"] == "fear"));
}

/// The key, the body and batch limits and the token budget of `/predict`, and its error shape.
#[test]
fn explain_refuses_what_it_cannot_do() {
    let s = Server::start(&["--api-key", "k-91", "--max-batch-tokens", "200", "--max-client-batch-size", "2"]);
    let key = ("Authorization", "Bearer k-91");
    assert_eq!(post(&s, &[JSON], &json!({"inputs": TEXT})).status, 401);
    for (body, status, says) in [
        (json!({"inputs": TEXT, "label": "bliss"}), 422, "label \"bliss\" is not one of this model's labels"),
        (json!({"inputs": TEXT, "steps": 0}), 422, "steps must be between 1 and 1024"),
        (json!({"inputs": TEXT, "steps": 64}), 413, "over the maximum batch of 200 tokens"),
        (json!({"inputs": TEXT, "target": "loss"}), 422, "unknown variant"),
        (json!({"inputs": TEXT, "colour": true}), 422, "unknown field"),
        (json!({"inputs": ["a", "b", "c"]}), 413, "batch size 3 > maximum allowed batch size 2"),
        (json!({"inputs": "  "}), 400, "input 0 is empty"),
    ] {
        let r = post(&s, &[JSON, key], &body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.json()["error"].as_str().unwrap().contains(says), "{body}: {}", r.body);
    }
    let r = post(&s, &[JSON, key], &json!({"inputs": TEXT, "steps": 8}));
    assert_eq!(r.status, 200, "(8 + 2) x 10 tokens fit 200: {}", r.body);
    let metrics = s.call("GET", "/metrics", &[key], None).body;
    assert!(metrics.contains("endpoint=\"/explain\""), "{metrics}");
}

/// The page's "Why?" button shows the text with its words on coloured backgrounds: each word as
/// `/explain` gives it, green where its score is positive, red where negative, the text between
/// them unchanged. The screenshot goes to the test's temporary directory.
#[test]
fn page_highlights_the_words_in_headless_chromium() {
    let s = Server::start(&[]);
    let text = "i feel so happy, and grateful today!";
    let b = Browser::open(&s.url("/"));
    b.type_into("#text", text);
    b.click("#explain");
    let js = "return Array.from(document.querySelectorAll('#why .word')).map(w => [w.textContent, \
              Number(w.dataset.score), getComputedStyle(w).backgroundColor])";
    let shown = b.wait_for(js, 20, |v| v.as_array().is_some_and(|a| !a.is_empty()));
    let api = post(&s, &[JSON], &json!({"inputs": text, "truncate": true})).json();
    let words = api["explanations"][0]["words"].as_array().unwrap();
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), words.len(), "{shown:?}");
    for (w, want) in shown.iter().zip(words) {
        assert_eq!(w[0], want["text"]);
        let (score, colour) = (w[1].as_f64().unwrap(), w[2].as_str().unwrap());
        assert!((score - want["score"].as_f64().unwrap()).abs() < 1e-6);
        // rgba(r, g, b, a), or rgb(r, g, b) for the strongest word (a = 1)
        let expected = if score >= 0.0 { "(56, 161, 105" } else { "(229, 62, 62" };
        assert!(colour.contains(expected), "{w:?}");
    }
    assert_eq!(b.script("return document.getElementById('why').textContent"), json!(text));
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-explain-page.png");
    std::fs::write(&shot, b.screenshot()).unwrap();
}
