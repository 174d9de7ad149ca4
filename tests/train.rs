//! `emotune train` end to end on the tiny fixtures and slices of the emotion data, and its
//! errors on bad data.

mod common;

use candle_core::Device;
use common::*;
use emotune::data::DataSpec;
use emotune::infer::Predictor;
use emotune::train::{train, train_with, Resume, RunControl, TrainConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn emotune(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("HF_HOME", hf_home()).env("HF_HUB_OFFLINE", "1").output().unwrap()
}

fn data_file(split: &str) -> PathBuf {
    shared().join("data/emotion").join(format!("{split}.txt"))
}

/// A short CLI run on a slice of the Hub dataset (parquet through the HF cache).
fn train_slice(model: &str, out: &Path) -> Output {
    train_slice_with(model, out, &[])
}

/// [`train_slice`] with more arguments.
fn train_slice_with(model: &str, out: &Path, extra: &[&str]) -> Output {
    let fixture_dir = fixture(model);
    let mut args = vec![
        "train",
        "--model",
        fixture_dir.to_str().unwrap(),
        "--dataset",
        "dair-ai/emotion",
        "--train-limit",
        "192",
        "--eval-limit",
        "96",
        "--batch-size",
        "32",
        "--eval-batch-size",
        "48",
        "--learning-rate",
        "1e-3",
        "--epochs",
        "2",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    emotune(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn check_run(model: &str, expected_arch: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = train_slice(model, &out);
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 4, "header, rule and one row per epoch:\n{stdout}");
    assert!(table[0].contains("Training Loss | Epoch | Step | Validation Loss | Accuracy | F1"));
    assert!(table[2].contains("| 1.0 ") && table[2].contains("| 6 "), "{}", table[2]);
    assert!(table[3].contains("| 2.0 ") && table[3].contains("| 12 "), "{}", table[3]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_args.json",
        "README.md",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // model.safetensors is written last, so a directory holding it is complete
    let written = |f: &str| std::fs::metadata(out.join(f)).unwrap().modified().unwrap();
    for f in ["config.json", "README.md", "metrics.jsonl", "learning_curves.png", "tokenizer.json"] {
        assert!(written(f) <= written("model.safetensors"), "{f} was written after model.safetensors");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], expected_arch);
    assert_eq!(config["problem_type"], "single_label_classification");
    let names: Vec<&str> = (0..6).map(|i| config["id2label"][i.to_string()].as_str().unwrap()).collect();
    assert_eq!(names, ["sadness", "joy", "love", "anger", "fear", "surprise"]);
    assert_eq!(config["label2id"]["surprise"], 5);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    for needle in [
        "base_model:",
        "model-index:",
        "## Model description",
        "## Intended uses & limitations",
        "## Training procedure",
        "### Training hyperparameters",
        "### Training results",
        "### Framework versions",
        "- learning_rate: 1e-03",
    ] {
        assert!(card.contains(needle), "card lacks {needle:?}");
    }
    assert!(card.contains(table[3]), "card table should hold the last row");
    let args: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training_args.json")).unwrap()).unwrap();
    assert_eq!(args["train_batch_size"], 32);
    assert_eq!(args["seed"], 42);
}

#[test]
fn trains_tiny_distilbert_through_the_cli() {
    check_run("tiny-distilbert", "DistilBertForSequenceClassification");
}

#[test]
fn trains_tiny_bert_through_the_cli() {
    check_run("tiny-bert", "BertForSequenceClassification");
}

#[test]
fn trains_tiny_roberta_through_the_cli() {
    check_run("tiny-roberta", "RobertaForSequenceClassification");
}

#[test]
fn trains_tiny_xlm_roberta_through_the_cli() {
    check_run("tiny-xlm-roberta", "XLMRobertaForSequenceClassification");
}

#[test]
fn same_seed_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        let o = train_slice("tiny-bert", d);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for f in ["metrics.jsonl", "model.safetensors"] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between two runs with the same seed");
    }
    let before = std::fs::read(fixture("tiny-bert").join("model.safetensors")).unwrap();
    assert!(before != std::fs::read(a.join("model.safetensors")).unwrap(), "training changed nothing");
}

#[test]
fn reloaded_model_gives_the_in_memory_logits() {
    std::env::set_var("HF_HOME", hf_home());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cfg = TrainConfig::seed_recipe(fixture("tiny-distilbert").to_str().unwrap(), out.clone());
    cfg.train_limit = Some(128);
    cfg.eval_limit = Some(64);
    cfg.train_batch_size = 32;
    cfg.num_train_epochs = 1;
    cfg.learning_rate = 1e-3;
    let spec = text_label_files();
    let outcome = train(&cfg, &spec, &Device::Cpu).unwrap();
    // Labels of `text;label` files are sorted names.
    assert_eq!(outcome.model.config.labels, ["anger", "fear", "joy", "love", "sadness", "surprise"]);
    let texts = ["i feel wonderful", "this makes me so angry", "i am scared of the dark"];
    let in_memory = Predictor::new(outcome.model, outcome.encoder, &Device::Cpu);
    let reloaded = Predictor::load(out.to_str().unwrap(), None, None, &Device::Cpu).unwrap();
    let a = in_memory.predict(&texts, 8).unwrap();
    let b = reloaded.predict(&texts, 8).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.logits, y.logits, "reloaded logits differ");
    }
    assert_eq!(reloaded.labels(), in_memory.labels());
}

/// Runs `train` on the given train/validation files and expects a failure mentioning `needle`,
/// with nothing written.
fn expect_data_error(train_text: &[u8], valid_text: &[u8], ext: &str, extra: &[&str], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let train_p = tmp.path().join(format!("train.{ext}"));
    let valid_p = tmp.path().join(format!("validation.{ext}"));
    std::fs::write(&train_p, train_text).unwrap();
    std::fs::write(&valid_p, valid_text).unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tiny-bert");
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        train_p.to_str().unwrap(),
        "--validation",
        valid_p.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = emotune(&args);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {needle:?}");
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    assert!(!out.exists(), "nothing may be written on bad data");
}

#[test]
fn malformed_row_names_file_and_line() {
    expect_data_error(
        b"i feel good;joy\ni feel bad;sadness\nno separator here\n",
        b"fine;joy\n",
        "txt",
        &[],
        "train.txt:3: malformed row",
    );
}

#[test]
fn validation_label_missing_from_train() {
    expect_data_error(
        b"i feel good;joy\ni feel bad;sadness\n",
        b"great;joy\nfurious;anger\n",
        "txt",
        &[],
        "validation.txt:2: label \"anger\" is not among the training labels",
    );
    // With declared label names, a class that train never shows is still an error.
    expect_data_error(
        b"i feel good;joy\ni feel bad;sadness\n",
        b"great;joy\nfurious;anger\n",
        "txt",
        &["--label-names", "sadness,joy,anger"],
        "validation.txt:2: label \"anger\" occurs in the validation split but never in the training split",
    );
}

#[test]
fn empty_split() {
    expect_data_error(b"i feel good;joy\n", b"", "txt", &[], "the validation split");
}

#[test]
fn missing_column() {
    expect_data_error(
        b"text,emotion\ni feel good,joy\n",
        b"text,emotion\nfine,joy\n",
        "csv",
        &[],
        "no column \"label\" (columns: text, emotion)",
    );
}

#[test]
fn malformed_csv_and_jsonl_rows() {
    expect_data_error(b"text,label\ngood,joy\n\"bad,joy,extra\n", b"text,label\nfine,joy\n", "csv", &[], "train.csv:3");
    expect_data_error(
        b"{\"text\": \"good\", \"label\": \"joy\"}\n{\"text\": \"bad\"\n",
        b"{\"text\": \"fine\", \"label\": 1}\n",
        "jsonl",
        &[],
        "train.jsonl:2: malformed JSON",
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    expect_data_error(
        b"i feel good;joy\ni feel \xff\xfe bad;sadness\n",
        b"fine;joy\n",
        "txt",
        &[],
        "train.txt:2: invalid UTF-8",
    );
}

#[test]
fn csv_and_jsonl_with_custom_columns_train() {
    let tmp = tempfile::tempdir().unwrap();
    let rows: Vec<(String, String)> = std::fs::read_to_string(data_file("train"))
        .unwrap()
        .lines()
        .take(64)
        .map(|l| {
            let (t, y) = l.rsplit_once(';').unwrap();
            (t.to_string(), y.to_string())
        })
        .collect();
    let mut wtr = csv::Writer::from_path(tmp.path().join("train.csv")).unwrap();
    wtr.write_record(["sentence", "emotion"]).unwrap();
    for (t, y) in &rows {
        wtr.write_record([t, y]).unwrap();
    }
    wtr.flush().unwrap();
    let jsonl: String =
        rows[..32].iter().map(|(t, y)| serde_json::json!({"sentence": t, "emotion": y}).to_string() + "\n").collect();
    std::fs::write(tmp.path().join("validation.jsonl"), jsonl).unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tiny-distilbert");
    let o = emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        tmp.path().to_str().unwrap(),
        "--text-column",
        "sentence",
        "--label-column",
        "emotion",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The labels came from the named column: their sorted distinct names, in the saved config.
    let mut names: Vec<&str> = rows.iter().map(|(_, y)| y.as_str()).collect();
    names.sort();
    names.dedup();
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let saved: Vec<&str> = (0..names.len()).map(|i| config["id2label"][i.to_string()].as_str().unwrap()).collect();
    assert_eq!(saved, names);
    // Fields that describe this model, not the base it came from.
    assert!(config.get("_name_or_path").is_none() && config.get("transformers_version").is_none(), "{config}");
    assert_eq!(config["emotune_version"], env!("CARGO_PKG_VERSION"));
    // One epoch of 64 rows at batch 16, evaluated on the 32 JSON lines.
    let table: Vec<String> =
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('|')).map(String::from).collect();
    assert_eq!(table.len(), 3, "{table:?}");
    assert!(table[2].contains("| 1.0 ") && table[2].contains("| 4 "), "{}", table[2]);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("classifier.weight").unwrap().shape()[0], names.len());
    // An existing model is not overwritten without --overwrite-output-dir.
    let again = emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        tmp.path().to_str().unwrap(),
        "--text-column",
        "sentence",
        "--label-column",
        "emotion",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a model"));
}

/// The path a GPU trains on (composed ops, AdamW moments as tensors beside the weights),
/// checked on the CPU: a run stopped after step 3 and resumed from its checkpoint ends with
/// the same bits as one that ran through, and it learns.
#[test]
fn composed_path_trains_and_resumes_bitwise() {
    std::env::set_var("HF_HOME", hf_home());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let _composed = emotune::model::precision::composed_ops();
    emotune::model::precision::take_paths();
    let tmp = tempfile::tempdir().unwrap();
    let spec = text_label_files();
    let cfg = |name: &str| {
        let mut cfg = TrainConfig::seed_recipe(fixture("tiny-bert").to_str().unwrap(), tmp.path().join(name));
        (cfg.train_limit, cfg.eval_limit, cfg.train_batch_size) = (Some(128), Some(64), 32);
        (cfg.num_train_epochs, cfg.learning_rate) = (2, 1e-3);
        cfg
    };
    let whole = train(&cfg("whole"), &spec, &Device::Cpu).unwrap();
    let stop = RunControl { resume: None, stop_after_step: Some(3) };
    let stopped = train_with(&cfg("split"), &spec, &Device::Cpu, &stop).unwrap();
    assert!(stopped.interrupted_at.is_some(), "the run stopped at step 3");
    let resume = RunControl { resume: Some(Resume::Latest), stop_after_step: None };
    train_with(&cfg("split"), &spec, &Device::Cpu, &resume).unwrap();
    for f in ["model.safetensors", "metrics.jsonl"] {
        let (a, b) = (std::fs::read(tmp.path().join("whole").join(f)), std::fs::read(tmp.path().join("split").join(f)));
        assert!(a.unwrap() == b.unwrap(), "{f} differs after a resume on the composed path");
    }
    let first = whole.rows.first().unwrap().training_loss;
    let last = whole.rows.last().unwrap().training_loss;
    assert!(last < first, "the composed path learns: training loss {first} -> {last}");
    let paths = emotune::model::precision::take_paths();
    assert!(paths.fused == 0 && paths.composed > 0, "the composed path must be the one that ran: {paths:?}");
}

/// `--dtype bf16` on a CPU with a bf16 engine (AMX tiles or AVX-512 BF16): a run stopped after
/// step 3 and resumed ends with the same bits as one that ran through, it learns, and it is not
/// the float32 run (bf16 applied).
#[test]
fn cpu_bf16_trains_and_resumes_bitwise() {
    if !emotune::model::kernels::amx::available() {
        eprintln!(
            "cpu_bf16_trains_and_resumes_bitwise: NOT CHECKED here ({})",
            emotune::model::kernels::amx::NO_ENGINE
        );
        return;
    }
    std::env::set_var("HF_HOME", hf_home());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let tmp = tempfile::tempdir().unwrap();
    let spec = text_label_files();
    let cfg = |name: &str, bf16: bool| {
        let mut cfg = TrainConfig::seed_recipe(fixture("tiny-bert").to_str().unwrap(), tmp.path().join(name));
        (cfg.train_limit, cfg.eval_limit, cfg.train_batch_size) = (Some(128), Some(64), 32);
        (cfg.num_train_epochs, cfg.learning_rate, cfg.bf16) = (2, 1e-3, bf16);
        cfg
    };
    let whole = train(&cfg("whole", true), &spec, &Device::Cpu).unwrap();
    let stop = RunControl { resume: None, stop_after_step: Some(3) };
    let stopped = train_with(&cfg("split", true), &spec, &Device::Cpu, &stop).unwrap();
    assert!(stopped.interrupted_at.is_some(), "the run stopped at step 3");
    let resume = RunControl { resume: Some(Resume::Latest), stop_after_step: None };
    train_with(&cfg("split", true), &spec, &Device::Cpu, &resume).unwrap();
    train(&cfg("f32", false), &spec, &Device::Cpu).unwrap();
    let read = |run: &str, f: &str| std::fs::read(tmp.path().join(run).join(f)).unwrap();
    for f in ["model.safetensors", "metrics.jsonl"] {
        assert!(read("whole", f) == read("split", f), "{f} differs after a resume in bf16");
    }
    assert!(read("whole", "model.safetensors") != read("f32", "model.safetensors"), "bf16 did not apply");
    let first = whole.rows.first().unwrap().training_loss;
    let last = whole.rows.last().unwrap().training_loss;
    assert!(last < first, "bf16 training learns: training loss {first} -> {last}");
}

/// The emotion train and validation splits as `text;label` files.
fn text_label_files() -> DataSpec {
    DataSpec {
        train: Some(data_file("train")),
        validation: Some(data_file("validation")),
        text_column: "text".into(),
        label_column: "label".into(),
        ..Default::default()
    }
}

/// `-q` ("only errors") silences every status line, bar and progress line of a run, and leaves
/// its results on stdout.
#[test]
fn quiet_prints_only_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = train_slice_with("tiny-distilbert", &dir.path().join("loud"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("epoch 1.00"), "without -q the run reports: {}", stderr(&o));
    let o = train_slice_with("tiny-distilbert", &dir.path().join("quiet"), &["-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "-q: nothing but errors on stderr");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Validation Loss"), "the results table stays on stdout");
}
