//! Multi-label data and training: lists of labels in every format (parquet lists through the HF
//! cache, the original GoEmotions TSV files with `labels.txt`, JSON lists, CSV cells split by
//! `--label-separator`), their errors, and a multi-label run through the CLI.

mod common;

use common::*;
use emotune::data::{self, DataSpec};
use std::path::Path;
use std::process::{Command, Output};

fn emotune(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("HF_HOME", hf_home()).env("HF_HUB_OFFLINE", "1").output().unwrap()
}

fn spec(dir: &Path) -> DataSpec {
    DataSpec {
        dataset: Some(dir.display().to_string()),
        text_column: "text".into(),
        label_column: "label".into(),
        ..Default::default()
    }
}

#[test]
fn goemotions_parquet_and_tsv_give_the_same_labels() {
    use_shared_cache();
    let mut hub = spec(Path::new("google-research-datasets/go_emotions"));
    hub.dataset = Some("google-research-datasets/go_emotions".into());
    let from_hub = data::load(&hub).unwrap();
    let from_tsv = data::load(&spec(&shared().join("data/go_emotions"))).unwrap();
    for ds in [&from_hub, &from_tsv] {
        assert!(ds.multi_label, "{}", ds.name);
        assert_eq!(ds.labels.len(), 28);
        assert_eq!(ds.labels[27], "neutral");
        assert_eq!(ds.split("train").unwrap().len(), 43410);
    }
    // The second validation comment is labelled approval (4) and neutral (27) in both.
    for ds in [&from_hub, &from_tsv] {
        assert_eq!(ds.split("validation").unwrap().examples[1].labels, [4, 27], "{}", ds.name);
    }
}

fn write_split_files(dir: &Path, ext: &str, train: &str, valid: &str) {
    std::fs::write(dir.join(format!("train.{ext}")), train).unwrap();
    std::fs::write(dir.join(format!("validation.{ext}")), valid).unwrap();
}

#[test]
fn json_lists_and_separated_cells_are_multi_label() {
    let dir = tempfile::tempdir().unwrap();
    let train = "{\"text\": \"so happy and grateful\", \"label\": [\"joy\", \"gratitude\"]}\n\
                 {\"text\": \"ugh\", \"label\": [\"anger\"]}\n";
    write_split_files(dir.path(), "jsonl", train, "{\"text\": \"thanks!\", \"label\": [\"gratitude\"]}\n");
    let ds = data::load(&spec(dir.path())).unwrap();
    assert!(ds.multi_label);
    assert_eq!(ds.labels, ["anger", "gratitude", "joy"]);
    assert_eq!(ds.split("train").unwrap().examples[0].labels, [2, 1]);

    let dir = tempfile::tempdir().unwrap();
    write_split_files(dir.path(), "csv", "text,label\nso happy,joy|love\nugh,anger\n", "text,label\nyay,joy\n");
    let mut s = spec(dir.path());
    s.label_separator = Some("|".into());
    let ds = data::load(&s).unwrap();
    assert!(ds.multi_label);
    assert_eq!(ds.split("train").unwrap().examples[0].labels, [1, 2]);
}

#[test]
fn bad_label_lists_name_file_and_line() {
    let cases = [
        ("{\"text\": \"nothing\", \"label\": []}\n", "train.jsonl:2: no label"),
        ("{\"text\": \"twice\", \"label\": [\"joy\", \"joy\"]}\n", "train.jsonl:2: label \"joy\" is given twice"),
        ("{\"text\": \"odd\", \"label\": [7]}\n", "train.jsonl:2: label 7 is out of range"),
    ];
    for (bad_row, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let train = format!("{{\"text\": \"fine\", \"label\": [\"joy\", \"anger\"]}}\n{bad_row}");
        write_split_files(dir.path(), "jsonl", &train, "{\"text\": \"ok\", \"label\": [\"joy\"]}\n");
        let mut s = spec(dir.path());
        s.label_names = Some(vec!["anger".into(), "joy".into()]);
        let err = format!("{:#}", data::load(&s).unwrap_err());
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
}

#[test]
fn trains_a_multi_label_model_and_predicts_label_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tiny-bert-multilabel");
    let o = emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "google-research-datasets/go_emotions",
        "--train-limit",
        "256",
        "--eval-limit",
        "128",
        "--batch-size",
        "32",
        "--learning-rate",
        "1e-3",
        "--epochs",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("| Validation Loss | Micro F1 | Macro F1 |"), "{stdout}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["problem_type"], "multi_label_classification");
    assert_eq!(config["id2label"]["27"], "neutral");
    let o = emotune(&["predict", "--model", out.to_str().unwrap(), "--format", "jsonl", "thank you so much!"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let scores = line["scores"].as_object().unwrap();
    assert_eq!(scores.len(), 28);
    // `labels` are exactly those whose score reaches their saved threshold.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("thresholds.json")).unwrap_or_else(|_| b"{}".to_vec())).unwrap();
    let threshold = |l: &str| saved["thresholds"][l].as_f64().unwrap_or(0.5);
    let mut want: Vec<&str> =
        scores.iter().filter(|(l, s)| s.as_f64().unwrap() >= threshold(l)).map(|(l, _)| l.as_str()).collect();
    let mut got: Vec<&str> = line["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{line}");
    // Sigmoid scores: independent, not summing to one.
    let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() > 0.5, "scores sum to {sum}");
    let o = emotune(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--dataset",
        "google-research-datasets/go_emotions",
        "--limit",
        "64",
        "--plot",
        tmp.path().join("f1.png").to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{report}{}", String::from_utf8_lossy(&o.stderr));
    assert!(report.contains("micro F1") && report.contains("samples F1") && report.contains("exact match"), "{report}");
    assert!(tmp.path().join("f1.png").is_file());
}

#[test]
fn tuned_thresholds_are_saved_and_used_unless_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tiny-bert-multilabel");
    let o = emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "google-research-datasets/go_emotions",
        "--train-limit",
        "256",
        "--eval-limit",
        "256",
        "--batch-size",
        "32",
        "--learning-rate",
        "1e-3",
        "--epochs",
        "1",
        "--tune-thresholds",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("thresholds tuned on the validation split: macro F1"), "{err}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("thresholds.json")).unwrap()).unwrap();
    assert_eq!(saved["tuned_on"], "validation");
    let t = saved["thresholds"].as_object().unwrap();
    assert_eq!(t.len(), 28);
    assert!(t.values().all(|v| (0.05..=0.95).contains(&v.as_f64().unwrap())));
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("### Decision thresholds") && card.contains("tuned per label"), "{card}");
    // --threshold 0 predicts every label; --threshold 1 none (sigmoids stay below 1 here).
    for (t, n) in [("0", 28), ("1", 0)] {
        let o = emotune(&["predict", "-m", out.to_str().unwrap(), "--format", "jsonl", "--threshold", t, "wow!"]);
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(line["labels"].as_array().unwrap().len(), n, "--threshold {t}: {line}");
    }
}

#[test]
fn check_data_reports_label_cardinality_and_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.json");
    let args = ["check-data", "--dataset", "google-research-datasets/go_emotions", "--show", "3", "--json"];
    let o = emotune(&[&args[..], &[json.to_str().unwrap()]].concat());
    // GoEmotions has texts given different labels and texts in two splits: errors, exit 1.
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("data error(s) found"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Labels per text (multi-label):"), "{out}");
    assert!(out.contains("Labels that occur together most often:"), "{out}");
    // The simplified GoEmotions train split: 43410 texts with 1.18 labels each on average.
    let train = out.lines().find(|l| l.starts_with("train") && l.split_whitespace().count() == 4).unwrap();
    let mean: f64 = train.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((1.1..1.3).contains(&mean), "{train}");
    // The JSON report says the same, and more.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["labels"].as_array().unwrap().len(), 28);
    let card = &r["multi_label"]["cardinality"][0];
    assert_eq!(card["split"], "train");
    assert!((card["mean"].as_f64().unwrap() - mean).abs() < 0.005, "{card} against the printed {mean}");
    assert!(card["max"].as_u64().unwrap() >= 2 && card["several"].as_u64().unwrap() > 0, "{card}");
    let pairs = r["multi_label"]["pairs"].as_array().unwrap();
    let counts: Vec<u64> = pairs.iter().map(|p| p[2].as_u64().unwrap()).collect();
    assert!(!counts.is_empty() && counts.windows(2).all(|w| w[0] >= w[1]), "most frequent first: {counts:?}");
    assert!(r["conflicting_labels"].as_array().is_some_and(|c| !c.is_empty()));
}
