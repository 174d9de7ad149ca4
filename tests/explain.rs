//! Integrated Gradients against Captum: `tests/golden/captum_ig.json` holds Captum 0.9's
//! `LayerIntegratedGradients` on the embedding layer of every tiny PyTorch fixture, for 20
//! emotion validation texts each (`python bench/captum_anchor.py fixtures` wrote it; PyTorch
//! computed every number in it). emotune must give the same per-token attributions and the same
//! convergence delta; and `predict --explain` must say so in its JSON and refuse bad requests.

mod common;

use candle_core::Device;
use common::*;
use emotune::explain::{explain, Options, Target};
use emotune::infer::Predictor;
use serde_json::Value;
use std::process::Command;

const REFERENCE: &str = "tests/golden/captum_ig.json";

/// Largest attribution difference from Captum's relative to the text's largest attribution.
/// Measured on an Intel Xeon with AMX: 6.2e-7 at most over the 120 cases (float32 sums in
/// another order). Bound: about five times that.
const TOLERANCE: f32 = 3e-6;
/// Largest difference from Captum's convergence delta. The tiny random models' logits barely
/// move between the baseline and the text (F(x) - F(x') is 1e-5 to 1e-3), so both deltas are
/// float32 rounding of logits near 0.1; measured 1.1e-8 at most. Bound: about five times that.
const DELTA_TOLERANCE: f32 = 5e-8;

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(REFERENCE).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Every fixture (DistilBERT, BERT, RoBERTa, XLM-R, multi-label BERT; logits, and probabilities
/// for BERT), loaded for inference as the CLI loads it: attributions and delta as Captum's.
#[test]
fn attributions_match_captum_on_every_fixture() {
    let reference = reference();
    let mut worst = 0f32;
    for m in reference["models"].as_array().unwrap() {
        let name = m["fixture"].as_str().unwrap();
        let target = if m["target"] == "probability" { Target::Probability } else { Target::Logit };
        let p = Predictor::load(fixture(name).to_str().unwrap(), None, None, &Device::Cpu).unwrap();
        let opts = Options { steps: reference["steps"].as_u64().unwrap() as usize, target, autocast: None };
        for case in m["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let (row, _) = p.encoder.tokenize_with_spans(text).unwrap();
            let ids: Vec<u32> =
                case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(row.ids, ids, "{name}: the tokens of {text:?}");
            let label = case["label"].as_u64().unwrap() as usize;
            let e = explain(&p.model, &p.encoder, text, &[label], &opts, &Device::Cpu).unwrap().remove(0);
            let want = floats(&case["attributions"]);
            let got: Vec<f32> = e.tokens.iter().map(|t| t.score).collect();
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            let delta_diff = (e.delta - case["delta"].as_f64().unwrap() as f32).abs();
            assert!(diff < TOLERANCE, "{name} ({target:?}) {text:?}: attributions {diff:e} from Captum's");
            assert!(delta_diff < DELTA_TOLERANCE, "{name} ({target:?}) {text:?}: delta {delta_diff:e} from Captum's");
            worst = worst.max(diff);
        }
    }
    eprintln!("largest attribution difference from Captum, relative to the largest: {worst:e}");
}

/// A model loaded for training (its weights variables: the fused layers then make the weight
/// gradients too) explains as the inference-loaded one, and one thread gives bitwise what two do.
#[test]
fn trainable_weights_and_thread_counts_give_the_same_attributions() {
    let dir = fixture("tiny-distilbert");
    let p = Predictor::load(dir.to_str().unwrap(), None, None, &Device::Cpu).unwrap();
    let config = emotune::model::ModelConfig::load(&dir.join("config.json")).unwrap();
    let trainable = emotune::model::load_classifier(config, &dir.join("model.safetensors"), 0, &Device::Cpu).unwrap();
    let text = "i am just feeling cranky and blue";
    let opts = Options::default();
    let run = |model, threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| explain(model, &p.encoder, text, &[3, 1], &opts, &Device::Cpu).unwrap())
    };
    let (one, two, train) = (run(&p.model, 1), run(&p.model, 2), run(&trainable, 2));
    let scores = |es: &[emotune::explain::Explanation]| -> Vec<Vec<f32>> {
        es.iter().map(|e| e.tokens.iter().map(|t| t.score).collect()).collect()
    };
    assert_eq!(scores(&one).len(), 2, "one explanation per label asked");
    let bits = |v: Vec<Vec<f32>>| v.into_iter().flatten().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(scores(&one)), bits(scores(&two)), "one thread against two");
    for (a, b) in scores(&train).iter().flatten().zip(scores(&two).iter().flatten()) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "trainable {a} against inference {b}");
    }
}

fn predict(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("predict").args(args).env("HF_HUB_OFFLINE", "1").output().unwrap()
}

/// `predict --explain`: the explanation of the predicted label (or the one asked), words that
/// are the text's own characters, and the attributions summing to F(x) - F(x') + delta.
#[test]
fn predict_explains_in_its_json_lines() {
    let model = fixture("tiny-bert");
    let model = model.to_str().unwrap();
    let text = "I'm SO   happy, unbelievably!";
    for extra in [&[][..], &["--explain-label", "anger", "--explain-target", "probability"][..]] {
        let out = predict(&[&["--model", model, "--explain", "--format", "jsonl", text][..], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let line: Value = serde_json::from_slice(&out.stdout).unwrap();
        let e = &line["explanation"];
        let want_label = if extra.is_empty() { &line["label"] } else { &Value::from("anger") };
        assert_eq!(&e["label"], want_label, "{line}");
        let chars: Vec<char> = text.chars().collect();
        for w in e["words"].as_array().unwrap() {
            let (s, t) = (w["start"].as_u64().unwrap() as usize, w["end"].as_u64().unwrap() as usize);
            assert_eq!(chars[s..t].iter().collect::<String>(), w["text"].as_str().unwrap());
        }
        let sum: f64 = e["tokens"].as_array().unwrap().iter().map(|t| t["score"].as_f64().unwrap()).sum();
        let (diff, delta) = (e["difference"].as_f64().unwrap(), e["delta"].as_f64().unwrap());
        assert!((sum - diff - delta).abs() < 1e-5, "sum {sum}, difference {diff}, delta {delta}");
        assert_eq!(e["target"], if extra.is_empty() { "logit" } else { "probability" });
    }
}

/// A multi-label model explains every predicted label, in a list.
#[test]
fn multi_label_models_explain_each_predicted_label() {
    let model = fixture("tiny-bert-multilabel");
    let out = predict(&[
        "--model",
        model.to_str().unwrap(),
        "--explain",
        "--threshold",
        "0.45",
        "--format",
        "jsonl",
        "wow ok",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&Value> = line["labels"].as_array().unwrap().iter().collect();
    let explained: Vec<&Value> = line["explanations"].as_array().unwrap().iter().map(|e| &e["label"]).collect();
    assert!(!labels.is_empty(), "the threshold predicts some labels: {line}");
    assert_eq!(explained, labels);
}

#[test]
fn bad_explanation_requests_are_refused() {
    let model = fixture("tiny-distilbert");
    let model = model.to_str().unwrap();
    for (args, message) in [
        (vec!["--explain", "--explain-steps", "0"], "--explain-steps must be between 1 and 1024"),
        (vec!["--explain-steps", "8"], "add --explain"),
        (vec!["--explain", "--explain-label", "bliss"], "--explain-label \"bliss\" is not one of this model's labels"),
        (vec!["--explain", "--explain-label", "6"], "is not one of this model's labels"),
    ] {
        let out = predict(&[&["--model", model, "some text"][..], &args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(message), "{args:?}: {err}");
    }
}

/// `eval --explain-worst`: every listed example explained, its predicted labels first and then
/// the gold ones it missed, in the JSON report and the text; the settings refused without it.
#[test]
fn eval_explains_the_highest_loss_examples() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let emotion = shared().join("data/emotion");
    let model = fixture("tiny-bert");
    let args = ["eval", "--model", model.to_str().unwrap(), "--dataset", emotion.to_str().unwrap(), "--limit", "40"];
    let out = Command::new(bin())
        .args(args)
        .args(["--top-losses", "3", "--explain-worst", "--explain-steps", "8", "--output-dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let worst = report["highest_loss"].as_array().unwrap();
    assert_eq!(worst.len(), 3);
    for e in worst {
        let explained: Vec<&str> =
            e["explanations"].as_array().unwrap().iter().map(|x| x["label"].as_str().unwrap()).collect();
        let (gold, predicted) = (e["gold"].as_str().unwrap(), e["predicted"].as_str().unwrap());
        let want: Vec<&str> = if gold == predicted { vec![predicted] } else { vec![predicted, gold] };
        assert_eq!(explained, want, "{e}");
        assert!(e["explanations"].as_array().unwrap().iter().all(|x| x["steps"] == 8));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("      why ").count(),
        worst.iter().map(|e| e["explanations"].as_array().unwrap().len()).sum::<usize>(),
        "{text}"
    );
    let refused = Command::new(bin()).args(args).args(["--explain-target", "probability"]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("add --explain-worst"), "{err}");
}
