//! Loading errors: each gives a clear message and a non-zero exit; plus `predict` output.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn predict(model: &Path, texts: &[&str]) -> Output {
    Command::new(bin())
        .args(["predict", "--model", model.to_str().unwrap()])
        .args(texts)
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// A writable copy of a fixture model directory.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    assert!(out.stdout.is_empty(), "nothing should be printed on stdout: {}", String::from_utf8_lossy(&out.stdout));
}

/// Like [`assert_fails_with`], for commands that print what they could do before failing.
fn assert_fails_with_any_stdout(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_weights_file() {
    let dir = copy_fixture("tiny-distilbert");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let out = predict(dir.path(), &["i feel fine"]);
    assert_fails_with(&out, "missing file model.safetensors");
}

#[test]
fn missing_tokenizer_file() {
    let dir = copy_fixture("tiny-bert");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_fails_with(&predict(dir.path(), &["i feel fine"]), "missing file tokenizer.json");
}

#[test]
fn missing_directory() {
    assert_fails_with(&predict(Path::new("./no/such/model"), &["x"]), "no such directory");
}

#[test]
fn hub_id_not_in_offline_cache() {
    let out = predict(Path::new("distilbert-base-uncased"), &["i feel fine"]);
    assert_fails_with(&out, "not in the Hugging Face cache");
}

#[test]
fn unsupported_model_type() {
    let dir = copy_fixture("tiny-bert");
    edit_config(dir.path(), |c| {
        c.insert("model_type".into(), "gpt2".into());
    });
    assert_fails_with(
        &predict(dir.path(), &["i feel fine"]),
        "unsupported model_type \"gpt2\" (supported: distilbert, bert, roberta, xlm-roberta)",
    );
}

#[test]
fn truncated_safetensors() {
    let dir = copy_fixture("tiny-distilbert");
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_with(&predict(dir.path(), &["i feel fine"]), "not a valid safetensors file");
}

#[test]
fn tensor_of_wrong_shape() {
    let dir = copy_fixture("tiny-distilbert");
    edit_config(dir.path(), |c| {
        c.insert("hidden_dim".into(), 48.into());
    });
    let out = predict(dir.path(), &["i feel fine"]);
    assert_fails_with(
        &out,
        "tensor distilbert.transformer.layer.0.ffn.lin1.weight has shape [64, 32], but the config implies [48, 32]",
    );
}

#[test]
fn empty_text_is_an_error() {
    let out = predict(&fixture("tiny-bert"), &["fine", "  "]);
    assert_fails_with_any_stdout(&out, "1 empty text(s) could not be classified: text 2");
}

#[test]
fn predict_prints_one_json_line_per_text_with_id2label() {
    let out = predict(&fixture("tiny-distilbert"), &["i feel great", "i am so sad today"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let expected = ["sadness", "joy", "love", "anger", "fear", "surprise"];
    for (line, text) in lines.iter().zip(["i feel great", "i am so sad today"]) {
        assert_eq!(line["text"], text);
        let scores = line["scores"].as_object().unwrap();
        let keys: Vec<&str> = scores.keys().map(String::as_str).collect();
        assert_eq!(keys, expected);
        let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {sum}");
        let (best, best_score) =
            scores.iter().max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap())).unwrap();
        assert_eq!(line["label"], best.as_str());
        assert_eq!(line["score"].as_f64().unwrap(), best_score.as_f64().unwrap());
    }
}

#[test]
fn flags_that_would_change_nothing_are_refused() {
    // --threshold on a single-label model (softmax picks the most probable label anyway)
    let o = predict(&fixture("tiny-distilbert"), &["--threshold", "0.3", "i feel fine"]);
    assert_fails_with(&o, "--threshold applies to multi-label models");
    // --logits where a table would drop them
    let o = predict(&fixture("tiny-distilbert"), &["--logits", "--format", "table", "i feel fine"]);
    assert_fails_with(&o, "--logits prints JSON lines");
    // --max-length without a model's tokenizer to count tokens with
    let data = shared().join("data/emotion");
    let o = Command::new(bin())
        .args(["check-data", "--dataset", data.to_str().unwrap(), "--max-length", "10"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--model"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Offline, an id that finds nothing says what the user may have meant: no such directory, a
/// close id the cache holds, or what it holds.
#[test]
fn not_found_errors_find_the_typo() {
    let run = |args: &[&str]| {
        let o = Command::new(bin()).args(args).env("HF_HOME", hf_home()).env("HF_HUB_OFFLINE", "1").output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run(&["predict", "-m", "my-model", "hi"]);
    assert!(err.contains("there is no directory my-model here either"), "{err}");
    assert!(err.contains("the cache holds the models sentence-transformers/all-MiniLM-L6-v2"), "{err}");
    for typo in ["dair-ai/emotions", "emotion"] {
        let err = run(&["check-data", "--dataset", typo]);
        assert!(err.contains("did you mean dair-ai/emotion (in the cache)?"), "{typo}: {err}");
    }
}
