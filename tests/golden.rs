//! Training output pinned bit for bit: two short runs through the CLI (tiny DistilBERT and tiny
//! BERT, 256 training rows, 2 epochs, different options) must give exactly the recorded sha256
//! of every tensor in `model.safetensors`, of `metrics.jsonl`, of the results table and of the
//! predictions the trained model makes. This is what makes refactoring safe: same inputs, same
//! bits.
//!
//! Bits depend on the CPU, so each record is keyed by the CPU as the code sees it
//! ([`emotune::cpu::CpuIdentity::key`]: vendor, family/model, the instruction sets the kernels
//! dispatch on, the cache sizes gemm blocks by). An earlier key, a hash of one fused linear's
//! output, was the same on an AMD Zen 4 and an Intel Xeon with AMX whose training bits differ
//! (by 1.5e-8 at most in any loss). What differs is not gemm's cache blocking (this Xeon, shown
//! Zen 4's caches through a bind mount over /sys/devices/system/cpu, gives bitwise its own
//! results) nor the thread count (RAYON_NUM_THREADS=1 gives the same bits); the kernels dispatch
//! the same way on both (AVX-512 F/VL/BW). It was not found; hence a key that names the CPU.
//!
//! - A record with this machine's key: the comparison is exact.
//! - No such record: both runs are made twice and must repeat bitwise, and every epoch's losses
//!   must lie within [`LOSS_TOLERANCE`] of the record of the same instruction sets (or the first
//!   record), accuracy within one validation example. The test says the exact check was not made.
//!
//! After a change that is meant to alter numerics: `EMOTUNE_RECORD_GOLDEN=1 cargo test --release
//! --test golden` on your machine replaces its record; drop the records of machines you cannot
//! rerun (their CI would otherwise fail on the next session there), and say so in the commit.

mod common;

use common::*;
use emotune::cpu::CpuIdentity;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const RECORD: &str = "tests/golden/training.json";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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

/// How far another CPU's losses may lie from the record. Measured: an Intel Xeon (AMX, AVX-512)
/// against the AMD Zen 4 record differ by at most 1.5e-8 in any loss (tiny-bert's epoch-2
/// training loss); CPUs with other gemm microkernels (AVX2 only) were not measured against it,
/// hence 1e-5, still 1700x below what the tiny-distilbert run learns (1.7824 -> 1.7651).
const LOSS_TOLERANCE: f64 = 1e-5;
/// One of the 64 validation examples.
const ACCURACY_TOLERANCE: f64 = 1.0 / 64.0 + 1e-9;

fn metrics_close(want: &Value, got: &Value) -> Vec<String> {
    let (w, g) = (want["metrics"].as_array().unwrap(), got["metrics"].as_array().unwrap());
    let mut out = Vec::new();
    if w.len() != g.len() {
        return vec![format!("{} evaluations, recorded {}", g.len(), w.len())];
    }
    let tolerances =
        [("training_loss", LOSS_TOLERANCE), ("validation_loss", LOSS_TOLERANCE), ("accuracy", ACCURACY_TOLERANCE)];
    for (rw, rg) in w.iter().zip(g) {
        for (key, tol) in tolerances {
            let (a, b) = (rw[key].as_f64().unwrap(), rg[key].as_f64().unwrap());
            if (a - b).abs() > tol {
                out.push(format!("epoch {}: {key} {b} is not within {tol} of the recorded {a}", rw["epoch"]));
            }
        }
    }
    out
}

/// The record to compare metrics with on a CPU without its own: one with the same instruction
/// sets (the same microkernels), else the first.
fn nearest<'a>(records: &'a [Value], cpu: &CpuIdentity) -> &'a Value {
    let features = cpu.features.join(",");
    let same = |r: &&Value| r["key"].as_str().is_some_and(|k| k.split(' ').nth(2) == Some(features.as_str()));
    records.iter().find(same).unwrap_or(&records[0])
}

#[test]
fn training_output_is_bitwise_as_recorded() {
    let cpu = CpuIdentity::current();
    let key = cpu.key();
    let tmp = tempfile::tempdir().unwrap();
    let mut got = Map::new();
    for run in runs() {
        got.insert(run.name.into(), run_and_hash(&run, &tmp.path().join(run.name)));
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(RECORD);
    let mut records = load_records(&path);
    if std::env::var_os("EMOTUNE_RECORD_GOLDEN").is_some() {
        records.retain(|r| r["key"] != key.as_str());
        records.push(json!({"key": key, "cpu": cpu.name, "runs": got}));
        let text = serde_json::to_string_pretty(&json!({"records": records})).unwrap() + "\n";
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        eprintln!("recorded the golden hashes of {key} ({}) in {RECORD}", cpu.name);
        return;
    }
    assert!(!records.is_empty(), "{RECORD} holds no records");
    match records.iter().find(|r| r["key"] == key.as_str()) {
        Some(record) => {
            eprintln!("golden: exact check against the record of {key}");
            for (name, run) in &got {
                let diff = differences(&record["runs"][name], run);
                assert!(diff.is_empty(), "{name} differs from the recorded run of {key}:\n{}", diff.join("\n"));
            }
        }
        None => {
            let near = nearest(&records, &cpu);
            eprintln!(
                "golden: NOT CHECKED here bit for bit: no record for {key} ({}); checking that both runs repeat \
                 bitwise and stay within {LOSS_TOLERANCE} of the losses recorded on {}",
                cpu.name, near["key"]
            );
            for run in runs() {
                let again = run_and_hash(&run, &tmp.path().join(format!("{}-again", run.name)));
                let diff = differences(&got[run.name], &again);
                assert!(diff.is_empty(), "{}: a second identical run differs:\n{}", run.name, diff.join("\n"));
            }
            for (name, run) in &got {
                let far = metrics_close(&near["runs"][name], run);
                assert!(far.is_empty(), "{name}: {}", far.join("; "));
            }
        }
    }
}
