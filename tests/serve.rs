//! `emotune serve` over loopback: endpoints, TEI's error codes, batching, shutdown, the page.

mod common;

use common::browser::Browser;
use common::server::Server;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const LABELS: [&str; 6] = ["sadness", "joy", "love", "anger", "fear", "surprise"];

fn check_ranked(v: &Value) -> Vec<(String, f64)> {
    let items: Vec<(String, f64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["label"].as_str().unwrap().to_string(), x["score"].as_f64().unwrap()))
        .collect();
    assert_eq!(items.len(), 6);
    assert!(items.windows(2).all(|w| w[0].1 >= w[1].1), "sorted by score: {items:?}");
    let mut names: Vec<&str> = items.iter().map(|(l, _)| l.as_str()).collect();
    names.sort();
    let mut want = LABELS.to_vec();
    want.sort();
    assert_eq!(names, want);
    items
}

#[test]
fn endpoints_answer() {
    let s = Server::start(&[]);
    let (code, body) = s.get("/health");
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.get("/info");
    assert_eq!(code, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["max_input_length"], 128);
    assert_eq!(info["model_type"]["classifier"]["id2label"]["5"], "surprise");
    assert!(info["version"].is_string() && info["model_id"].as_str().unwrap().contains("tiny-distilbert"));
    let (code, page) = s.get("/");
    assert_eq!(code, 200);
    assert!(page.contains("<textarea") && page.contains("/predict"));
    let (code, body) = s.get("/nope");
    assert_eq!(code, 404);
    assert!(body.contains("\"error\""));

    let (code, one) = s.predict(json!({"inputs": "i feel so happy today"}));
    assert_eq!(code, 200);
    let items = check_ranked(&one);
    let total: f64 = items.iter().map(|(_, p)| p).sum();
    assert!((total - 1.0).abs() < 1e-5);
    let (code, many) = s.predict(json!({"inputs": ["i feel so happy today", "i am scared"]}));
    assert_eq!(code, 200);
    let many = many.as_array().unwrap();
    assert_eq!(many.len(), 2);
    check_ranked(&many[1]);
    // raw_scores are the logits: the same as `emotune predict --logits`.
    let (code, raw) = s.predict(json!({"inputs": "i am scared", "raw_scores": true}));
    assert_eq!(code, 200);
    let out = Command::new(bin())
        .args(["predict", "--logits", "-m", fixture("tiny-distilbert").to_str().unwrap(), "i am scared"])
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    for item in raw.as_array().unwrap() {
        let id = LABELS.iter().position(|l| *l == item["label"]).unwrap();
        let want = line["logits"][id].as_f64().unwrap();
        assert!((item["score"].as_f64().unwrap() - want).abs() < 1e-5, "{item} vs {want}");
    }
    let (_, metrics) = s.get("/metrics");
    for name in [
        "emotune_requests_total{endpoint=\"/predict\",status=\"200\"} 3",
        "emotune_request_duration_seconds_bucket",
        "emotune_batch_inputs_bucket",
        "emotune_queue_depth 0",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
}

/// A multi-label model: sigmoid scores for every label, in TEI's shape, the same as `predict`;
/// `/info` gives its problem type and thresholds.
#[test]
fn multi_label_models_serve_sigmoid_scores() {
    let s = Server::start_model("tiny-bert-multilabel", &["--threshold", "0.3"]);
    let info: Value = serde_json::from_str(&s.get("/info").1).unwrap();
    assert_eq!(info["problem_type"], "multi_label_classification");
    let thresholds = info["thresholds"].as_object().unwrap();
    assert_eq!(thresholds.len(), 28);
    assert!(thresholds.values().all(|t| (t.as_f64().unwrap() - 0.3).abs() < 1e-6));
    let (code, one) = s.predict(json!({"inputs": "thanks, that made my day"}));
    assert_eq!(code, 200);
    let items = one.as_array().unwrap();
    assert_eq!(items.len(), 28);
    let total: f64 = items.iter().map(|x| x["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() > 0.5, "sigmoid scores do not sum to one: {total}");
    let out = Command::new(bin())
        .args(["predict", "--format", "jsonl", "-m", fixture("tiny-bert-multilabel").to_str().unwrap()])
        .arg("thanks, that made my day")
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    for item in items {
        let want = line["scores"][item["label"].as_str().unwrap()].as_f64().unwrap();
        assert!((item["score"].as_f64().unwrap() - want).abs() < 1e-6, "{item} vs {want}");
    }
}

#[test]
fn tei_error_codes() {
    let s = Server::start(&["--max-client-batch-size", "4"]);
    let (code, body) = s.predict(json!({"inputs": ["a", "b", "c", "d", "e"]}));
    assert_eq!(code, 413);
    assert_eq!(body["error_type"], "Validation");
    let long = "i feel happy ".repeat(100);
    let (code, body) = s.predict(json!({"inputs": long}));
    assert_eq!(code, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("128 tokens"));
    let (code, _) = s.predict(json!({"inputs": long, "truncate": true}));
    assert_eq!(code, 200);
    let (code, body) = s.post_raw("/predict", "{\"inputs\": ");
    assert_eq!(code, 400);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (code, body) = s.post_raw("/predict", "{\"inputs\": 42}");
    assert_eq!(code, 422);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (code, _) = s.predict(json!({"inputs": []}));
    assert_eq!(code, 400);
    let (code, _) = s.predict(json!({"inputs": "  "}));
    assert_eq!(code, 400);
}

#[test]
fn too_many_concurrent_requests_get_429() {
    let s = Server::start(&["--max-concurrent-requests", "2", "--batch-delay-ms", "400"]);
    let codes: Vec<u16> = std::thread::scope(|sc| {
        let s = &s;
        let hs: Vec<_> =
            (0..8).map(|i| sc.spawn(move || s.predict(json!({"inputs": format!("text {i}")})).0)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = codes.iter().filter(|&&c| c == 200).count();
    let busy = codes.iter().filter(|&&c| c == 429).count();
    assert_eq!(ok + busy, 8, "{codes:?}");
    assert!(ok >= 2 && busy >= 1, "{codes:?}");
}

#[test]
fn concurrent_requests_are_batched_and_answered_correctly() {
    let s = Server::start(&["--batch-delay-ms", "300"]);
    let texts: Vec<String> =
        (0..8).map(|i| format!("i feel {} today", ["happy", "sad", "angry", "scared"][i % 4])).collect();
    // Each text alone first.
    let alone: Vec<Value> = texts.iter().map(|t| s.predict(json!({"inputs": t})).1).collect();
    let before = s.metric("emotune_batches_total");
    let together: Vec<Value> = std::thread::scope(|sc| {
        let s = &s;
        let hs: Vec<_> = texts.iter().map(|t| sc.spawn(move || s.predict(json!({"inputs": t})))).collect();
        hs.into_iter()
            .map(|h| {
                let (code, v) = h.join().unwrap();
                assert_eq!(code, 200);
                v
            })
            .collect()
    });
    let batches = s.metric("emotune_batches_total") - before;
    assert!(batches < 8.0, "8 concurrent requests ran in {batches} batches: not batched");
    for (a, b) in alone.iter().zip(&together) {
        let (a, b) = (check_ranked(a), check_ranked(b));
        for ((la, pa), (lb, pb)) in a.iter().zip(&b) {
            assert_eq!(la, lb);
            assert!((pa - pb).abs() < 1e-5);
        }
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut s = Server::start(&["--batch-delay-ms", "800"]);
    let url = s.url("/predict");
    let inflight = std::thread::spawn(move || {
        ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string("{\"inputs\": \"i feel calm\"}")
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(200));
    let status = s.terminate();
    assert_eq!(inflight.join().unwrap().unwrap(), 200, "the in-flight request must complete");
    assert!(status.success(), "exit status {status:?}");
}

/// Each bar (`label width%`) is as wide as the API's score for its label (the page rounds to
/// 0.1 %) for the text the page test types.
fn bars_show_the_scores(s: &Server, bars: &[String]) {
    let r = s.call(
        "POST",
        "/predict",
        &[("Authorization", "Bearer page-key-7f3a"), ("Content-Type", "application/json")],
        Some(br#"{"inputs": "i feel so happy and grateful today", "raw_scores": false}"#),
    );
    let scores = r.json();
    for l in bars {
        let (name, width) = l.split_once(' ').unwrap();
        assert!(LABELS.contains(&name), "{l}");
        let shown: f64 = width.strip_suffix('%').unwrap().parse().unwrap();
        let score = scores.as_array().unwrap().iter().find(|x| x["label"] == name).unwrap()["score"].as_f64().unwrap();
        assert!((shown - 100.0 * score).abs() <= 0.051, "{name}: bar {width} for score {score}");
    }
}

#[test]
/// The page in a real browser, against a server with an API key: the first try is refused and
/// the page asks for the key (which it never held); with the key typed in, six bars.
fn page_shows_six_bars_in_headless_chromium() {
    let s = Server::start(&["--api-key", "page-key-7f3a"]);
    assert!(!s.get("/").1.contains("page-key-7f3a"), "the page must not embed the key");
    let b = Browser::open(&s.url("/"));
    b.type_into("#text", "i feel so happy and grateful today");
    b.click("#go");
    let asked = b.wait_for("return document.getElementById('keyrow').hidden", 15, |v| v == &json!(false));
    assert_eq!(asked, json!(false), "the page did not ask for the key");
    assert_eq!(b.script("return document.querySelectorAll('#bars .row').length"), json!(0));
    b.type_into("#key", "page-key-7f3a");
    b.click("#go");
    let js = "return Array.from(document.querySelectorAll('#bars .row')).map(r => r.dataset.label + ' ' + r.querySelector('.bar').style.width)";
    let got = b.wait_for(js, 15, |v| v.as_array().is_some_and(|a| a.len() == 6));
    let labels: Vec<String> = got.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    assert_eq!(labels.len(), 6, "six bars: {labels:?}");
    bars_show_the_scores(&s, &labels);
    // A long label ("disappointment", GoEmotions) is cut with an ellipsis inside its box, not
    // drawn over its bar.
    let js = "const r = document.querySelector('#bars .row'); const n = r.querySelector('.name'); \
              n.textContent = 'disappointment and embarrassment'; const st = getComputedStyle(n); \
              return [st.overflow, st.textOverflow, st.whiteSpace, n.getBoundingClientRect().right <= \
              r.querySelector('.track').getBoundingClientRect().left + 0.5]";
    assert_eq!(b.script(js), json!(["hidden", "ellipsis", "nowrap", true]));
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&shot, b.screenshot()).unwrap();
}
