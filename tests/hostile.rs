//! Hostile and careless input, as a user would give it: closed pipes, broken and lying model
//! directories, training that diverges, special files, huge fields, terminal escapes, odd
//! formats. Each must end in a clear error naming what is wrong (or a quiet stop), with nothing
//! half-written or damaged.

mod common;

use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn emotune(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("HF_HOME", hf_home()).env("HF_HUB_OFFLINE", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails_with(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a failure, got success; stderr: {err}");
    assert_eq!(o.status.code(), Some(1), "exit code (101 is a panic): {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    err
}

/// A copy of a fixture model directory.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Rewrites `model.safetensors` in `dir`: `edit` may change each tensor's values or drop it
/// (returns false).
fn rewrite_weights(dir: &Path, edit: impl Fn(&str, &mut Vec<f32>) -> bool) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut v: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        if edit(&name, &mut v) {
            kept.push((name, view.shape().to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// `emotune train` of `model` on the dataset `data` into `out`, with the recipe's defaults.
fn train_into(model: &Path, data: &str, out: &Path) -> Output {
    emotune(&["train", "--model", model.to_str().unwrap(), "--dataset", data, "--output-dir", out.to_str().unwrap()])
}

fn predict(model: &Path, texts: &[&str]) -> Output {
    let mut args = vec!["predict", "--model", model.to_str().unwrap(), "--format", "jsonl"];
    args.extend(texts);
    emotune(&args)
}

// ------------------------------------------------------------------ 1. closed pipes

/// Runs `args` with stdout read for one byte and then closed, as `| head -c 1` does.
fn with_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(bin())
        .args(args)
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    // The smallest pipe (one page), so that any report longer than 4 KiB meets the closed end.
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on the read end of a pipe this test owns; F_SETPIPE_SZ only resizes its buffer.
    let rc = unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(rc >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    let mut one = [0u8; 1];
    out.read_exact(&mut one).unwrap();
    drop(out);
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap(), err)
}

#[test]
fn a_closed_pipe_stops_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    let mut f = std::fs::File::create(&input).unwrap();
    for i in 0..3000 {
        writeln!(f, "i feel happy about number {i} and the long day that went before it").unwrap();
    }
    let model = fixture("tiny-distilbert");
    let predict = ["predict", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()];
    // GoEmotions' full report is tens of KB, more than the pipe holds: the write must fail.
    let check = ["check-data", "--dataset", "google-research-datasets/go_emotions", "--show", "100000"];
    for args in [&predict[..], &check[..]] {
        let (status, err) = with_closed_pipe(args);
        // As ripgrep: the reader went away, so the work is done: status 0, no error printed.
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        assert!(!err.contains("error"), "{args:?}: {err}");
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
    }
}

// ------------------------------------------------------------------ 2. lying models

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for (which, needle) in [("classifier.weight", "classifier.weight"), ("", "holds")] {
        let dir = copy_fixture("tiny-distilbert");
        rewrite_weights(dir.path(), |name, v| {
            if which.is_empty() || name == which {
                v.iter_mut().enumerate().for_each(|(i, x)| *x = if i % 2 == 0 { f32::NAN } else { f32::INFINITY });
            }
            true
        });
        let o = predict(dir.path(), &["i feel fine"]);
        let err = fails_with(&o, needle);
        assert!(err.contains("NaN or infinite"), "{err}");
        assert!(o.stdout.is_empty(), "no predictions from a broken model");
    }
}

#[test]
fn weights_that_overflow_are_refused_naming_the_tensor() {
    // Finite weights whose products overflow float32: the logits become infinite or NaN.
    let dir = copy_fixture("tiny-distilbert");
    rewrite_weights(dir.path(), |name, v| {
        if name == "classifier.weight" {
            v.iter_mut().for_each(|x| *x = 3e38);
        }
        true
    });
    let o = predict(dir.path(), &["i feel fine", "so sad"]);
    let err = fails_with(&o, "outputs are not finite");
    assert!(err.contains("classifier.weight"), "{err}");
    assert!(o.stdout.is_empty(), "no predictions from a broken model: {}", String::from_utf8_lossy(&o.stdout));
    let data = shared().join("data/emotion/validation.txt");
    let model = dir.path().to_str().unwrap();
    let o = emotune(&["eval", "--model", model, "--input", data.to_str().unwrap(), "--limit", "8"]);
    fails_with(&o, "outputs are not finite");
    // The server answers TEI's backend error (424) with the reason, never a null score.
    let s = server::Server::start_path(dir.path(), &[]);
    let (status, body) = s.predict(serde_json::json!({"inputs": "i feel fine"}));
    assert_eq!(status, 424, "{body}");
    assert!(body["error"].as_str().unwrap().contains("outputs are not finite"), "{body}");
}

#[test]
fn duplicate_label_names_are_refused() {
    let dir = copy_fixture("tiny-distilbert");
    edit_config(dir.path(), |c| {
        c["id2label"] = serde_json::json!({"0": "joy", "1": "joy", "2": "joy", "3": "joy", "4": "joy", "5": "joy"});
    });
    fails_with(&predict(dir.path(), &["i feel fine"]), "id2label gives \"joy\" to ids 0 and 1");
}

#[test]
fn a_model_without_its_head_does_not_predict() {
    let dir = copy_fixture("tiny-distilbert");
    rewrite_weights(dir.path(), |name, _| !name.starts_with("classifier.") && !name.starts_with("pre_classifier."));
    fails_with(&predict(dir.path(), &["i feel fine"]), "no trained classification head");
    // Fine-tuning it is fine: the head starts afresh.
    let out = tempfile::tempdir().unwrap();
    let o = emotune(&[
        "train",
        "--model",
        dir.path().to_str().unwrap(),
        "--dataset",
        "dair-ai/emotion",
        "--train-limit",
        "32",
        "--eval-limit",
        "16",
        "--epochs",
        "1",
        "--output-dir",
        out.path().join("m").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

// ------------------------------------------------------------------ 3. divergence

fn train_args<'a>(out: &'a str, lr: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--dataset",
        "dair-ai/emotion",
        "--train-limit",
        "128",
        "--eval-limit",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--learning-rate",
        lr,
        "--output-dir",
        out,
    ];
    args.extend(extra);
    args
}

fn with_model(mut args: Vec<&str>, model: &'static str) -> Vec<String> {
    let m = fixture(model).to_str().unwrap().to_string();
    let mut v: Vec<String> = args.drain(..).map(String::from).collect();
    v.extend(["--model".to_string(), m]);
    v
}

fn run(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    emotune(&refs)
}

#[test]
fn a_diverging_run_stops_and_keeps_the_good_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run(&with_model(train_args(out.to_str().unwrap(), "1e-3", &[]), "tiny-distilbert"));
    assert!(o.status.success(), "{}", stderr(&o));
    let good = std::fs::read(out.join("model.safetensors")).unwrap();
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let args = train_args(out.to_str().unwrap(), "1e4", &["--overwrite-output-dir", "--save-steps", "1"]);
    let err = fails_with(&run(&with_model(args, "tiny-distilbert")), "training diverged at step");
    assert!(err.contains("epoch 1, batch") && err.contains("rows ") && err.contains("--learning-rate"), "{err}");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), good, "the good model was replaced");
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics, "metrics.jsonl was replaced");
    // Any checkpoint left behind holds a finite state.
    for entry in std::fs::read_dir(&out).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("checkpoint-") {
            let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (name, v) in st.tensors() {
                let finite = v.data().chunks_exact(4).all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite());
                assert!(finite, "{}: {name} is not finite", p.display());
            }
        }
    }
}

#[test]
fn checkpoints_on_the_way_to_a_divergence_are_removed() {
    // Step 1's update at this rate is finite but huge (checkpoint-1 is written); step 2 diverges.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = train_args(out.to_str().unwrap(), "1e4", &["--save-steps", "1"]);
    let err = fails_with(&run(&with_model(args, "tiny-distilbert")), "training diverged at step");
    let step: usize = err.split("at step ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(step > 1, "the run must diverge after writing checkpoint-1 for this test to test anything: {err}");
    assert!(err.contains("Removed") && err.contains("checkpoint-1"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "the diverged run left {left:?}");
    assert!(!out.exists(), "an output directory holding no usable checkpoint is removed");
}

#[test]
fn a_run_failing_early_leaves_no_output_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fresh");
    let o = run(&with_model(train_args(out.to_str().unwrap(), "1e4", &[]), "tiny-bert"));
    fails_with(&o, "training diverged");
    assert!(!out.exists(), "a failed run left {} behind", out.display());
}

// ------------------------------------------------------------------ 4. special files

#[test]
fn special_files_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("dir.txt")).unwrap();
    std::os::unix::fs::symlink(d.join("loop-b.txt"), d.join("loop-a.txt")).unwrap();
    std::os::unix::fs::symlink(d.join("loop-a.txt"), d.join("loop-b.txt")).unwrap();
    assert!(Command::new("mkfifo").arg(d.join("fifo.txt")).status().unwrap().success());
    let model = fixture("tiny-distilbert");
    let cases: [(PathBuf, &str); 4] = [
        (d.join("dir.txt"), "is a directory"),
        (d.join("loop-a.txt"), "symbolic links"),
        (PathBuf::from("/dev/null"), "is a character device"),
        (d.join("fifo.txt"), "FIFO"),
    ];
    for (path, needle) in &cases {
        let p = path.to_str().unwrap();
        fails_with(&emotune(&["predict", "--model", model.to_str().unwrap(), "--input", p]), needle);
        let valid = shared().join("data/emotion/validation.txt");
        fails_with(&emotune(&["check-data", "--train", p, "--validation", valid.to_str().unwrap()]), needle);
    }
    // A directory where the weights belong.
    let m = copy_fixture("tiny-distilbert");
    std::fs::remove_file(m.path().join("model.safetensors")).unwrap();
    std::fs::create_dir(m.path().join("model.safetensors")).unwrap();
    fails_with(&predict(m.path(), &["hi"]), "model.safetensors: is a directory");
}

#[test]
fn check_data_names_the_rows_whose_labels_train_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let train: String = (0..30).map(|i| format!("i feel fine today {i};joy\n")).collect();
    let valid: String = (0..30).map(|i| format!("what a day number {i};elation\n")).collect();
    std::fs::write(dir.path().join("train.txt"), train).unwrap();
    std::fs::write(dir.path().join("validation.txt"), valid).unwrap();
    let o = emotune(&["check-data", "--dataset", dir.path().to_str().unwrap(), "--show", "3"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(out.contains("31 unusable row(s)") || out.contains("30 unusable row(s)"), "{out}");
    assert!(out.contains("validation.txt:1: label \"elation\" is not among the training labels"), "{out}");
    assert!(!stderr(&o).contains("has no rows"), "{}", stderr(&o));
}

#[test]
fn mixing_single_labels_and_lists_is_refused_naming_both_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut train: String =
        (0..60).map(|i| format!("{{\"text\": \"i feel fine {i}\", \"label\": \"joy\"}}\n")).collect();
    train.push_str("{\"text\": \"a list here\", \"label\": [\"joy\"]}\n");
    std::fs::write(dir.path().join("train.jsonl"), train).unwrap();
    std::fs::write(dir.path().join("validation.jsonl"), "{\"text\": \"so good\", \"label\": \"joy\"}\n").unwrap();
    let data = dir.path().to_str().unwrap();
    let needle = "mixes single labels and lists of labels";
    let err = fails_with(&emotune(&["check-data", "--dataset", data]), needle);
    assert!(err.contains("train.jsonl:61 has a list") && err.contains("train.jsonl:1 a single label"), "{err}");
    let model = fixture("tiny-distilbert");
    let out = dir.path().join("out");
    let o = train_into(&model, data, &out);
    fails_with(&o, needle);
}

// ------------------------------------------------------------------ 5. and 6. what is echoed

#[test]
fn a_huge_label_is_clipped_in_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "x".repeat(1 << 20);
    std::fs::write(dir.path().join("train.txt"), format!("i feel fine;joy\nok then;{huge}\n")).unwrap();
    std::fs::write(dir.path().join("validation.txt"), format!("what a day;joy\nso what;{huge}z\n")).unwrap();
    let o = emotune(&["check-data", "--dataset", dir.path().to_str().unwrap()]);
    assert!(o.stdout.len() < 20_000, "check-data echoed {} bytes", o.stdout.len());
    let model = fixture("tiny-bert");
    let out = dir.path().join("out");
    let o = train_into(&model, dir.path().to_str().unwrap(), &out);
    let err = fails_with(&o, "is not among the training labels");
    assert!(err.len() < 4_000, "train echoed {} bytes", err.len());
}

#[test]
fn terminal_escapes_in_texts_and_labels_never_reach_the_terminal() {
    let model = fixture("tiny-distilbert");
    let hostile = "evil \u{1b}]0;pwned\u{7} \u{1b}[2J text \u{202e}desrever";
    let o = emotune(&["predict", "--model", model.to_str().unwrap(), "--format", "table", hostile]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = String::from_utf8(o.stdout).unwrap();
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}') && !shown.contains('\u{202e}'), "{shown:?}");
    assert!(shown.contains("\\u{1b}"), "escaped, not dropped: {shown:?}");
    // In an error message too: a label with an escape sequence.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.txt"), "i feel fine;joy\n").unwrap();
    std::fs::write(dir.path().join("validation.txt"), "so what;\u{1b}[31mred\n").unwrap();
    let out = dir.path().join("out");
    let o = train_into(&model, dir.path().to_str().unwrap(), &out);
    let err = fails_with(&o, "is not among the training labels");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

// ------------------------------------------------------------------ 7. formats

#[test]
fn dictionary_encoded_parquet_labels_load() {
    use arrow_array::{types::Int32Type, ArrayRef, DictionaryArray, RecordBatch, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "validation"] {
        let texts: Vec<String> =
            ["i feel great", "i am so sad", "this is wonderful"].map(|t| format!("{t} ({split})")).to_vec();
        let texts: ArrayRef = Arc::new(StringArray::from(texts));
        let labels: ArrayRef = Arc::new(["joy", "sadness", "joy"].into_iter().collect::<DictionaryArray<Int32Type>>());
        let batch = RecordBatch::try_from_iter([("text", texts), ("label", labels)]).unwrap();
        let file = std::fs::File::create(dir.path().join(format!("{split}.parquet"))).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let o = emotune(&["check-data", "--dataset", dir.path().to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("labels: joy, sadness"), "{out}");
}

#[test]
fn unknown_extensions_and_mixed_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("train.xml");
    std::fs::write(&xml, "<rows><row>i feel fine;joy</row></rows>\n").unwrap();
    let valid = shared().join("data/emotion/validation.txt");
    let o = emotune(&["check-data", "--train", xml.to_str().unwrap(), "--validation", valid.to_str().unwrap()]);
    fails_with(&o, "unsupported file type .xml (supported: .parquet, .csv, .tsv, .jsonl, .json, .txt)");
    let both = tempfile::tempdir().unwrap();
    std::fs::write(both.path().join("train.txt"), "i feel fine;joy\n").unwrap();
    std::fs::write(both.path().join("train.csv"), "text,label\ni feel fine,joy\n").unwrap();
    std::fs::write(both.path().join("validation.txt"), "so good;joy\n").unwrap();
    let o = emotune(&["check-data", "--dataset", both.path().to_str().unwrap()]);
    fails_with(&o, "train.csv, train.txt");
}
