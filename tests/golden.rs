//! Training output pinned bit for bit: two short runs through the CLI (tiny DistilBERT and tiny
//! BERT, 256 training rows, 2 epochs, different options) must give exactly the recorded sha256
//! of every tensor in `model.safetensors`, of `metrics.jsonl`, of the results table and of the
//! predictions the trained model makes. This is what makes refactoring safe: same inputs, same
//! bits.
//!
//! Bits depend on the CPU's numerics (gemm's microkernel and its cache blocking, which it picks
//! at run time), so each record is keyed by a fingerprint of what gemm computes here. On a CPU
//! with a recorded fingerprint the comparison is exact; on another one the runs must still
//! repeat bitwise and land within a loose tolerance of the recorded metrics, and the test says
//! that the exact check was not possible. `EMOTUNE_RECORD_GOLDEN=1` adds or replaces the
//! record of this CPU (do that only on a commit whose numerics are known to be right).

mod common;

use candle_core::{Device, Tensor, Var};
use common::*;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const RECORD: &str = "tests/golden/training.json";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Values in [-0.5, 0.5) from a fixed formula: no RNG, so the fingerprint's inputs never change.
fn pattern(shape: &[usize], salt: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919 + salt * 104_729) % 1000) as f32 * 1e-3 - 0.5).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn tensor_bits(t: &Tensor) -> Vec<u8> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The sha256 of the fused linear's forward and backward on shapes like the tiny models' (the
/// weight gradient sums over 2048 rows, so gemm's blocking of the summed dimension shows).
fn numerics_fingerprint() -> String {
    let x = Var::from_tensor(&pattern(&[2048, 64], 1)).unwrap();
    let w = Var::from_tensor(&pattern(&[96, 64], 2)).unwrap();
    let b = Var::from_tensor(&pattern(&[96], 3)).unwrap();
    let y = emotune::model::kernels::linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
    let loss = y.mul(&pattern(&[2048, 96], 4)).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut bytes = tensor_bits(&y);
    for v in [&x, &w, &b] {
        bytes.extend(tensor_bits(grads.get(v.as_tensor()).unwrap()));
    }
    sha256(&bytes)
}

struct Run {
    name: &'static str,
    args: Vec<String>,
}

fn runs() -> Vec<Run> {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let emotion_dir = shared().join("data/emotion");
    let mut a = s(&["train", "--model"]);
    a.push(fixture("tiny-distilbert").display().to_string());
    a.extend(s(&["--dataset"]));
    a.push(emotion_dir.display().to_string());
    a.extend(s(&[
        "--train-limit",
        "256",
        "--eval-limit",
        "64",
        "--batch-size",
        "32",
        "--eval-batch-size",
        "32",
        "--learning-rate",
        "1e-3",
        "--epochs",
        "2",
        "--warmup-ratio",
        "0.1",
        "--save-steps",
        "5",
    ]));
    let mut b = s(&["train", "--model"]);
    b.push(fixture("tiny-bert").display().to_string());
    b.extend(s(&[
        "--dataset",
        "dair-ai/emotion",
        "--train-limit",
        "256",
        "--eval-limit",
        "64",
        "--batch-size",
        "32",
        "--learning-rate",
        "5e-4",
        "--epochs",
        "2",
        "--group-by-length",
        "--class-weights",
        "balanced",
        "--max-grad-norm",
        "0.5",
        "--weight-decay",
        "0.1",
        "--load-best-at-end",
        "--metric-for-best",
        "f1",
    ]));
    vec![Run { name: "tiny-distilbert", args: a }, Run { name: "tiny-bert", args: b }]
}

const TEXTS: [&str; 4] = [
    "i feel so happy and grateful today",
    "i am scared of the dark and the noises outside",
    "why would you do that to me, i am furious",
    "i miss her so much",
];

fn emotune(args: &[String]) -> std::process::Output {
    let o = Command::new(bin()).args(args).env("HF_HOME", hf_home()).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(o.status.success(), "emotune {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Trains, predicts and hashes what came out.
fn run_and_hash(run: &Run, out: &Path) -> Value {
    let mut args = run.args.clone();
    args.extend(["--output-dir".to_string(), out.display().to_string()]);
    let trained = emotune(&args);
    let table: String = String::from_utf8(trained.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.to_string() + "\n")
        .collect();
    let mut predict = vec!["predict".to_string(), "--model".into(), out.display().to_string()];
    predict.extend(["--format", "jsonl", "--top-k", "3", "--logits"].map(String::from));
    predict.extend(TEXTS.map(String::from));
    let predicted = emotune(&predict).stdout;
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let tensors: Map<String, Value> =
        names.iter().map(|n| (n.clone(), json!(sha256(st.tensor(n).unwrap().data())))).collect();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    json!({
        "metrics.jsonl": sha256(metrics.as_bytes()),
        "metrics": metrics.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>(),
        "table": sha256(table.as_bytes()),
        "predict": sha256(&predicted),
        "tensors": tensors,
    })
}

fn load_records(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Value>(&text).unwrap()["records"].as_array().unwrap().clone(),
        Err(_) => Vec::new(),
    }
}

fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)));
    name.map_or("unknown".into(), |n| n.trim().to_string())
}

/// Compares two runs' hashes; returns what differs.
fn differences(want: &Value, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["metrics.jsonl", "table", "predict"] {
        if want[key] != got[key] {
            out.push(format!("{key}: {} != {}", want[key], got[key]));
        }
    }
    let (w, g) = (want["tensors"].as_object().unwrap(), got["tensors"].as_object().unwrap());
    if w.keys().ne(g.keys()) {
        out.push(format!(
            "tensor names differ: {:?} vs {:?}",
            w.keys().collect::<Vec<_>>(),
            g.keys().collect::<Vec<_>>()
        ));
    }
    out.extend(w.iter().filter(|(k, v)| g.get(*k) != Some(v)).map(|(k, _)| format!("tensor {k} differs")));
    out
}

fn metrics_close(want: &Value, got: &Value) -> Vec<String> {
    let (w, g) = (want["metrics"].as_array().unwrap(), got["metrics"].as_array().unwrap());
    let mut out = Vec::new();
    if w.len() != g.len() {
        return vec![format!("{} evaluations, recorded {}", g.len(), w.len())];
    }
    for (rw, rg) in w.iter().zip(g) {
        for (key, tol) in [("training_loss", 0.02), ("validation_loss", 0.02), ("accuracy", 0.05)] {
            let (a, b) = (rw[key].as_f64().unwrap(), rg[key].as_f64().unwrap());
            if (a - b).abs() > tol {
                out.push(format!("{key} {b} is not within {tol} of the recorded {a}"));
            }
        }
    }
    out
}

#[test]
fn training_output_is_bitwise_as_recorded() {
    let fingerprint = numerics_fingerprint();
    let tmp = tempfile::tempdir().unwrap();
    let mut got = Map::new();
    for run in runs() {
        got.insert(run.name.into(), run_and_hash(&run, &tmp.path().join(run.name)));
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(RECORD);
    let mut records = load_records(&path);
    if std::env::var_os("EMOTUNE_RECORD_GOLDEN").is_some() {
        records.retain(|r| r["fingerprint"] != fingerprint);
        records.push(json!({"fingerprint": fingerprint, "cpu": cpu_name(), "runs": got}));
        let text = serde_json::to_string_pretty(&json!({"records": records})).unwrap() + "\n";
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        eprintln!("recorded the golden hashes of fingerprint {fingerprint} ({}) in {RECORD}", cpu_name());
        return;
    }
    assert!(!records.is_empty(), "{RECORD} holds no records");
    match records.iter().find(|r| r["fingerprint"] == fingerprint) {
        Some(record) => {
            for (name, run) in &got {
                let diff = differences(&record["runs"][name], run);
                assert!(diff.is_empty(), "{name} differs from the recorded run:\n{}", diff.join("\n"));
            }
        }
        None => {
            eprintln!(
                "note: no golden record for this CPU's numerics (fingerprint {fingerprint}, {}); checking that runs \
                 repeat bitwise and stay near the recorded metrics instead",
                cpu_name()
            );
            let again = run_and_hash(&runs()[0], &tmp.path().join("again"));
            let diff = differences(&got["tiny-distilbert"], &again);
            assert!(diff.is_empty(), "a second identical run differs:\n{}", diff.join("\n"));
            for (name, run) in &got {
                let far = metrics_close(&records[0]["runs"][name], run);
                assert!(far.is_empty(), "{name}: {}", far.join("; "));
            }
        }
    }
}
