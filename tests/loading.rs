//! Checkpoint variants: bare base models, pretraining heads, legacy names, head initialisation.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use emotune::model::ModelConfig;
use emotune::model::{load_classifier, LoadedModel};
use std::collections::HashMap;
use std::path::Path;

fn original(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu).unwrap()
}

fn load(name: &str, weights: &Path, seed: u64) -> LoadedModel {
    let config = ModelConfig::load(&fixture(name).join("config.json")).unwrap();
    load_classifier(config, weights, seed, &Device::Cpu).unwrap()
}

fn param(m: &LoadedModel, name: &str) -> Tensor {
    m.params.get(name).unwrap_or_else(|| panic!("no parameter {name}")).as_tensor().clone()
}

/// A DistilBERT base-model checkpoint: no prefix, a masked-LM head, no classification head.
fn bare_distilbert(dir: &Path) -> std::path::PathBuf {
    let mut out: HashMap<String, Tensor> = original("tiny-distilbert")
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("distilbert.").map(|k| (k.to_string(), v)))
        .collect();
    out.insert("vocab_projector.bias".into(), Tensor::zeros(30522, candle_core::DType::F32, &Device::Cpu).unwrap());
    out.insert("vocab_layer_norm.weight".into(), Tensor::ones(32, candle_core::DType::F32, &Device::Cpu).unwrap());
    let p = dir.join("model.safetensors");
    candle_core::safetensors::save(&out, &p).unwrap();
    p
}

#[test]
fn bare_base_model_loads_and_gets_a_seeded_head() {
    let dir = tempfile::tempdir().unwrap();
    let weights = bare_distilbert(dir.path());
    let orig = original("tiny-distilbert");
    let a = load("tiny-distilbert", &weights, 42);
    // The encoder is the checkpoint's, under the prefixed names.
    let name = "distilbert.transformer.layer.1.ffn.lin2.weight";
    assert_eq!(max_abs_diff(&param(&a, name), &orig[name]), 0.0);
    // The head is new: N(0, 0.02) weights, zero biases, reproducible from the seed.
    for head in ["pre_classifier", "classifier"] {
        let w = param(&a, &format!("{head}.weight"));
        let b = param(&a, &format!("{head}.bias"));
        assert_eq!(max_abs(&b), 0.0, "{head}.bias should start at zero");
        let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.004, "{head}.weight std {std}");
        assert!(mean.abs() < 0.004, "{head}.weight mean {mean}");
        assert!(max_abs_diff(&w, &orig[&format!("{head}.weight")]) > 0.0);
    }
    let b = load("tiny-distilbert", &weights, 42);
    let c = load("tiny-distilbert", &weights, 7);
    assert_eq!(max_abs_diff(&param(&a, "classifier.weight"), &param(&b, "classifier.weight")), 0.0);
    assert!(max_abs_diff(&param(&a, "classifier.weight"), &param(&c, "classifier.weight")) > 0.0);
}

#[test]
fn legacy_layernorm_names_load() {
    let dir = tempfile::tempdir().unwrap();
    let orig = original("tiny-bert");
    let renamed: HashMap<String, Tensor> = orig
        .iter()
        .map(|(k, v)| {
            (k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"), v.clone())
        })
        .collect();
    let p = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&renamed, &p).unwrap();
    let m = load("tiny-bert", &p, 0);
    let name = "bert.encoder.layer.0.output.LayerNorm.weight";
    assert_eq!(max_abs_diff(&param(&m, name), &orig[name]), 0.0);
}

#[test]
fn missing_encoder_tensor_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = original("tiny-bert");
    t.remove("bert.encoder.layer.1.attention.self.value.bias");
    let p = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    let config = ModelConfig::load(&fixture("tiny-bert").join("config.json")).unwrap();
    let err = load_classifier(config, &p, 0, &Device::Cpu).err().expect("loading should fail");
    assert!(format!("{err:#}").contains("missing tensor bert.encoder.layer.1.attention.self.value.bias"), "{err:#}");
}

/// A bare `RobertaModel` checkpoint (no `roberta.` prefix, a pooler, an MLM head, no
/// classification head) loads its encoder and gets a fresh RoBERTa head.
#[test]
fn bare_roberta_model_loads_with_a_new_head() {
    let dir = tempfile::tempdir().unwrap();
    let orig = original("tiny-roberta");
    let mut out: HashMap<String, Tensor> =
        orig.iter().filter_map(|(k, v)| k.strip_prefix("roberta.").map(|k| (k.to_string(), v.clone()))).collect();
    let zeros = |n: usize| Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    out.insert("pooler.dense.bias".into(), zeros(32));
    out.insert("lm_head.bias".into(), zeros(2000));
    let weights = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&out, &weights).unwrap();
    let m = load("tiny-roberta", &weights, 42);
    let name = "roberta.encoder.layer.1.output.dense.weight";
    assert_eq!(max_abs_diff(&param(&m, name), &orig[name]), 0.0);
    assert_eq!(max_abs(&param(&m, "classifier.out_proj.bias")), 0.0);
    assert!(max_abs_diff(&param(&m, "classifier.dense.weight"), &orig["classifier.dense.weight"]) > 0.0);
}

/// Half-precision checkpoints (f16 and bf16, as `bench/f16_copy.py` writes for the GPU machine)
/// load into float32 parameters: every value is the stored one widened exactly, and the logits
/// stay within the half format's rounding of PyTorch's f32 ones.
#[test]
fn f16_and_bf16_checkpoints_load_as_float32() {
    let dir = tempfile::tempdir().unwrap();
    let r = Reference::load(&fixture("tiny-bert").join("reference.safetensors"));
    for (dtype, bound) in [(candle_core::DType::F16, 2e-3), (candle_core::DType::BF16, 2e-2)] {
        let half: HashMap<String, Tensor> =
            original("tiny-bert").into_iter().map(|(k, v)| (k, v.to_dtype(dtype).unwrap())).collect();
        let p = dir.path().join(format!("{dtype:?}.safetensors"));
        candle_core::safetensors::save(&half, &p).unwrap();
        let m = load("tiny-bert", &p, 0);
        for (name, stored) in &half {
            let loaded = param(&m, name);
            assert_eq!(loaded.dtype(), candle_core::DType::F32, "{name}");
            assert_eq!(max_abs_diff(&loaded, &stored.to_dtype(candle_core::DType::F32).unwrap()), 0.0, "{name}");
        }
        let ids = r.rows_u32("input_ids");
        let mask = r.rows_u32("attention_mask");
        let mut batch = emotune::tokenize::Batch::from_rows(&ids, &mask, &Device::Cpu).unwrap();
        let (b, s) = batch.dims();
        batch.token_type_ids =
            Some(Tensor::from_vec(r.rows_u32("token_type_ids").concat(), (b, s), &Device::Cpu).unwrap());
        let logits = m.model.forward(&batch, &emotune::model::Dropout::eval()).unwrap();
        let err = max_abs_diff(&logits, r.get("logits")) / max_abs(r.get("logits"));
        assert!(err <= bound, "{dtype:?}: logits off by {err} of the largest");
    }
}
