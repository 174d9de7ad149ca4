//! `predict`, `eval` and `check-data` through the CLI.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn emotune(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(o.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn model() -> String {
    fixture("tiny-distilbert").to_str().unwrap().to_string()
}

#[test]
fn predict_from_stdin_reports_empty_lines() {
    let o = emotune(&["predict", "-m", &model()], Some(b"i feel great\n\n   \ni am scared\n"));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 4, "one output line per input line");
    assert_eq!(lines[1]["error"], "empty text");
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[2]["line"], 3);
    assert_eq!(lines[3]["text"], "i am scared");
    assert!(lines[3]["label"].is_string());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 empty text(s) could not be classified: <stdin>:2, <stdin>:3"), "{err}");
}

#[test]
fn predict_from_files_with_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("in.jsonl");
    std::fs::write(&jsonl, "{\"sentence\": \"i feel great\"}\n{\"sentence\": \"i am angry\"}\n").unwrap();
    let o = emotune(
        &["predict", "-m", &model(), "--input", jsonl.to_str().unwrap(), "--text-column", "sentence", "--top-k", "3"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let top = l["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["label"], l["label"]);
        let scores: Vec<f64> = top.iter().map(|t| t["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked: {scores:?}");
    }
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "id,text\n1,i feel great\n2,\"i am, frankly, angry\"\n").unwrap();
    let o = emotune(
        &["predict", "-m", &model(), "--input", csv.to_str().unwrap(), "--format", "table", "--all-scores"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    // --all-scores ranks every label; the ranking's first entry is the label.
    assert!(out.lines().next().unwrap().contains("ranked"), "{out}");
    assert_eq!(out.lines().nth(1).unwrap().matches(" 0.").count(), 6, "{out}");
    assert!(out.contains("i am, frankly, angry"));
    assert_eq!(out.lines().count(), 3);
    // A missing column is an error naming the file.
    let o = emotune(&["predict", "-m", &model(), "--input", csv.to_str().unwrap(), "--text-column", "body"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no column \"body\""));
}

#[test]
fn predict_warns_about_truncated_texts() {
    let long = "i feel happy ".repeat(100);
    let o = emotune(&["predict", "-m", &model(), &long, "short one"], None);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 text(s) were longer than 128 tokens"), "{err}");
    assert_eq!(json_lines(&o).len(), 2);
}

#[test]
fn eval_report_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("cm.png");
    let json = dir.path().join("report.json");
    let test_file = shared().join("data/emotion/test.txt");
    let o = emotune(
        &[
            "eval",
            "-m",
            &model(),
            "--input",
            test_file.to_str().unwrap(),
            "--limit",
            "120",
            "--top-losses",
            "5",
            "--plot",
            png.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    for needle in
        ["accuracy", "F1 weighted", "precision", "confusion matrix", "row-normalised", "5 highest-loss examples"]
    {
        assert!(out.contains(needle), "report lacks {needle:?}");
    }
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["examples"], 120);
    // Recompute the scores from the confusion matrix, independently of the library.
    let cm: Vec<Vec<f64>> = r["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    let k = cm.len();
    let n: f64 = cm.iter().flatten().sum();
    assert_eq!(n, 120.0);
    let acc = (0..k).map(|i| cm[i][i]).sum::<f64>() / n;
    assert!((r["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
    let mut weighted = 0.0;
    for c in 0..k {
        let tp = cm[c][c];
        let support: f64 = cm[c].iter().sum();
        let predicted: f64 = (0..k).map(|g| cm[g][c]).sum();
        let f1 = if support + predicted == 0.0 { 0.0 } else { 2.0 * tp / (support + predicted) };
        assert!((r["per_class"][c]["f1"].as_f64().unwrap() - f1).abs() < 1e-12);
        weighted += f1 * support / n;
    }
    assert!((r["f1_weighted"].as_f64().unwrap() - weighted).abs() < 1e-12);
    let losses: Vec<f64> = r["highest_loss"].as_array().unwrap().iter().map(|e| e["loss"].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 5);
    assert!(losses.windows(2).all(|w| w[0] >= w[1]));
    assert!(r["highest_loss"][0]["location"].as_str().unwrap().contains("test.txt:"));
}

#[test]
fn check_data_finds_planted_problems() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.txt");
    let valid = dir.path().join("validation.txt");
    let mut t: Vec<u8> = Vec::new();
    t.extend_from_slice(b"i feel fine;joy\n"); // 1
    t.extend_from_slice(b";joy\n"); // 2 empty text
    t.extend_from_slice(b"i feel \xff broken;sadness\n"); // 3 invalid UTF-8
    t.extend_from_slice(b"no label separator\n"); // 4 malformed
    t.extend_from_slice(b"i feel \x07 odd;joy\n"); // 5 control character
    t.extend_from_slice(b"i feel twice;joy\n"); // 6 duplicate
    t.extend_from_slice(b"i feel twice;joy\n"); // 7 duplicate
    t.extend_from_slice(b"i feel torn;joy\n"); // 8 conflicting
    t.extend_from_slice(b"i feel torn;sadness\n"); // 9 conflicting
    t.extend_from_slice(b"i feel leaked;sadness\n"); // 10 leaks into validation
    std::fs::write(&train, t).unwrap();
    std::fs::write(&valid, "i feel leaked;sadness\ni feel calm;serenity\n").unwrap();
    let json = dir.path().join("check.json");
    let m = model();
    let o = emotune(
        &["check-data", "--dataset", dir.path().to_str().unwrap(), "--model", &m, "--json", json.to_str().unwrap()],
        None,
    );
    assert!(!o.status.success(), "errors must give a non-zero exit");
    let out = String::from_utf8(o.stdout).unwrap();
    let t = train.display().to_string();
    let v = valid.display().to_string();
    for needle in [
        format!("{t}:2: empty text"),
        format!("{t}:3: invalid UTF-8"),
        format!("{t}:4: malformed row"),
        format!("{v}:2: label \"serenity\" is not among the training labels"),
        // Listings name a split's only file by the split, the full path once above them.
        format!("  train = {t}\n"),
        format!("  validation = {v}\n"),
        "train:5: control character U+0007".to_string(),
        "train:6".to_string(),
        "train:7".to_string(),
        "train:8 (joy), train:9 (sadness)".to_string(),
        "validation:1 (sadness)".to_string(),
        "text(s) carry different labels".to_string(),
        "appear in more than one split (leakage)".to_string(),
        "repeated within a split".to_string(),
        "Tokens per text".to_string(),
        "Summary:".to_string(),
    ] {
        assert!(out.contains(&needle), "report lacks {needle:?}:\n{out}");
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["unusable_rows"].as_array().unwrap().len(), 4);
    assert_eq!(r["conflicting_labels"].as_array().unwrap().len(), 1);
    assert_eq!(r["leakage"].as_array().unwrap().len(), 1);
    assert_eq!(r["duplicates"].as_array().unwrap().len(), 2, "twice (same label) and torn (two labels)");
    assert_eq!(r["counts"][0]["per_label"], serde_json::json!([5, 2]), "joy (lines 1, 5-8), sadness (9, 10) in train");
}

#[test]
fn check_data_passes_clean_data() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.txt"), "i feel fine;joy\ni feel low;sadness\n").unwrap();
    std::fs::write(dir.path().join("test.txt"), "i feel great;joy\n").unwrap();
    let o = emotune(&["check-data", "--dataset", dir.path().to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no problems found"));
}

/// Without --plot, eval writes the plot beside the model with the split in its name, says where,
/// and never replaces one without --overwrite.
#[test]
fn eval_writes_its_plot_beside_the_model_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("model");
    std::fs::create_dir(&m).unwrap();
    for f in std::fs::read_dir(fixture("tiny-distilbert")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, m.join(f.file_name().unwrap())).unwrap();
    }
    let data = shared().join("data/emotion/validation.txt");
    let args = ["eval", "-m", m.to_str().unwrap(), "--input", data.to_str().unwrap(), "--limit", "16"];
    let o = emotune(&args, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = m.join("confusion_matrix_test.png");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("confusion matrix saved to {}", png.display())));
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let o = emotune(&args, None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("confusion_matrix_test.png already exists: pass --overwrite"), "{err}");
    assert!(o.stdout.is_empty(), "refused before any work");
    let o = emotune(&[&args[..], &["--overwrite"]].concat(), None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let elsewhere = dir.path().join("reports");
    let o = emotune(&[&args[..], &["--output-dir", elsewhere.to_str().unwrap()]].concat(), None);
    assert!(o.status.success() && elsewhere.join("confusion_matrix_test.png").is_file());
}

#[test]
fn bench_writes_a_random_base_model_that_trains() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("random-tiny");
    let tiny = fixture("tiny-distilbert");
    // The tokenizer comes from a directory that has nothing else (no weights, no config).
    let tok = dir.path().join("tokenizer-only");
    std::fs::create_dir(&tok).unwrap();
    let write = |tokenizer: &std::path::Path| {
        let config = tiny.join("config.json");
        let args = ["bench", "--config", config.to_str().unwrap(), "--write-model", out.to_str().unwrap()];
        emotune(&[&args[..], &["--tokenizer", tokenizer.to_str().unwrap()]].concat(), None)
    };
    let o = write(&tok);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no tokenizer.json"));
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), tok.join(f)).unwrap();
    }
    let o = write(&tok);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("random"), "{readme}");
    // A base checkpoint: encoder weights only, no task head.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let names: Vec<String> =
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect();
    assert!(names.iter().all(|n| n.starts_with("distilbert.")), "{names:?}");
    // `train` adds a head for the dataset's six labels and fine-tunes it.
    let trained = dir.path().join("trained");
    let o = emotune(
        &[
            "train",
            "--model",
            out.to_str().unwrap(),
            "--dataset",
            "dair-ai/emotion",
            "--train-limit",
            "64",
            "--eval-limit",
            "32",
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--output-dir",
            trained.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A classifier now: the dataset's labels in its config, a six-way head in its weights.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trained.join("config.json")).unwrap()).unwrap();
    let labels: Vec<&str> = (0..6).map(|i| config["id2label"][i.to_string()].as_str().unwrap()).collect();
    assert_eq!(labels, ["sadness", "joy", "love", "anger", "fear", "surprise"]);
    let bytes = std::fs::read(trained.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let dim = serde_json::from_slice::<serde_json::Value>(&std::fs::read(tiny.join("config.json")).unwrap()).unwrap()
        ["dim"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(st.tensor("classifier.weight").unwrap().shape(), [6, dim]);
    assert_eq!(st.tensor("pre_classifier.weight").unwrap().shape(), [dim, dim]);
}

/// Without --config, bench times the built-in distilbert-base-uncased shape, from any directory.
#[test]
fn bench_has_the_distilbert_base_shape_built_in() {
    let elsewhere = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .args(["bench", "--batch-size", "2", "--seq", "8", "--steps", "1", "--warmup", "0", "--json"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim()).unwrap();
    assert_eq!((r["batch"].as_u64(), r["seq"].as_u64()), (Some(2), Some(8)));
    assert!(r["train_step_s"].as_f64().unwrap() > 0.0);
    // The shape timed is distilbert-base-uncased's (its config from ../shared/fixtures): the
    // parameters of its encoder and of a six-label DistilBertForSequenceClassification head.
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("distilbert-base-uncased.config.json")).unwrap()).unwrap();
    let n = |k: &str| c[k].as_u64().unwrap();
    let (dim, hidden) = (n("dim"), n("hidden_dim"));
    let embeddings = (n("vocab_size") + n("max_position_embeddings")) * dim + 2 * dim;
    let layer = 4 * (dim * dim + dim) + 2 * (dim * hidden) + hidden + dim + 4 * dim;
    let head = dim * dim + dim + dim * 6 + 6;
    let expected = embeddings + n("n_layers") * layer + head;
    assert_eq!(expected, 66_958_086);
    assert_eq!(r["params"].as_u64(), Some(expected));
}

/// The inference figures: one-text latency percentiles over --latency-runs passes and texts/s
/// at batch 1, 8 and --batch-size, on --threads threads.
#[test]
fn bench_reports_latency_percentiles_and_throughput_per_batch() {
    let tiny = fixture("tiny-distilbert").join("config.json");
    let o = Command::new(bin())
        .args(["bench", "--config", tiny.to_str().unwrap(), "--batch-size", "16", "--seq", "12", "--steps", "2"])
        .args(["--latency-runs", "30", "--threads", "1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim()).unwrap();
    let (p50, p99) = (r["one_text_p50_s"].as_f64().unwrap(), r["one_text_p99_s"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99, "{r}");
    assert_eq!(r["latency_runs"], 30);
    let packed = emotune::model::kernels::panels::Isa::detect().name();
    assert_eq!(r["f32_kernel"], packed, "the inference timings ran on weights packed at load: {r}");
    let cpu = emotune::cpu::CpuIdentity::current().describe();
    assert_eq!(r["cpu"], cpu.as_str(), "the figures name the CPU they came from: {r}");
    let batches: Vec<u64> = r["throughput"].as_array().unwrap().iter().map(|t| t["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 8, 16]);
    assert!(r["throughput"].as_array().unwrap().iter().all(|t| t["texts_per_s"].as_f64().unwrap() > 0.0));
    let zero = Command::new(bin()).args(["bench", "--threads", "0"]).output().unwrap();
    assert!(!zero.status.success() && String::from_utf8_lossy(&zero.stderr).contains("--threads"));
}

/// `predict --input` reads a parquet file's text column like the other formats.
#[test]
fn predict_reads_parquet_input() {
    let snapshots = hf_home().join("hub/datasets--dair-ai--emotion/snapshots");
    let snapshot = std::fs::read_dir(&snapshots).unwrap().next().unwrap().unwrap().path();
    let parquet = snapshot.join("split/validation-00000-of-00001.parquet");
    let o = emotune(&["predict", "-m", &model(), "--input", parquet.to_str().unwrap(), "--format", "jsonl"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2000, "one line per validation row");
    assert!(lines[0]["text"].as_str().is_some_and(|t| !t.is_empty()) && lines[0]["label"].is_string());
}
