//! The model card (`README.md`) in the form Transformers' Trainer writes it.

use crate::data::Dataset;
use crate::model::ModelConfig;
use crate::train::{format_table, EpochRow, TrainConfig};

fn fmt_lr(x: f64) -> String {
    // Python prints 2e-05 for 2e-5.
    let s = format!("{x:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

/// The dataset's short name, as the Trainer writes it (`dair-ai/emotion` → `emotion`).
fn dataset_name(d: &Dataset) -> String {
    let n = d.name.trim_end_matches('/');
    n.rsplit('/').next().unwrap_or(n).to_string()
}

/// The card of a fine-tuned model. `rows` are the evaluations; the reported results are the
/// last row's.
pub fn model_card(
    cfg: &TrainConfig,
    dataset: &Dataset,
    config: &ModelConfig,
    n_params: usize,
    rows: &[EpochRow],
    best_row: Option<usize>,
) -> String {
    let name = cfg.output_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let ds = dataset_name(dataset);
    let base_is_hub = !std::path::Path::new(&cfg.model).exists();
    // The reported results: the best epoch's when the saved model is that epoch's, else the last.
    let last = match best_row {
        Some(i) => rows.get(i),
        None => rows.last(),
    };
    let mut s = String::from("---\nlibrary_name: transformers\nlicense: apache-2.0\n");
    s.push_str(&format!("base_model: {}\n", yaml_str(&cfg.model)));
    s.push_str("tags:\n- generated_from_trainer\n- emotune\n");
    s.push_str(&format!("datasets:\n- {}\n", yaml_str(&ds)));
    s.push_str("metrics:\n- accuracy\n- f1\n");
    s.push_str(&format!("model-index:\n- name: {}\n  results:\n", yaml_str(&name)));
    if let Some(r) = last {
        s.push_str("  - task:\n      name: Text Classification\n      type: text-classification\n");
        s.push_str(&format!("    dataset:\n      name: {}\n      type: {}\n", yaml_str(&ds), yaml_str(&dataset.name)));
        if let Some(c) = &dataset.config_name {
            s.push_str(&format!("      config: {}\n", yaml_str(c)));
        }
        s.push_str("      split: validation\n");
        if let Some(c) = &dataset.config_name {
            s.push_str(&format!("      args: {}\n", yaml_str(c)));
        }
        s.push_str("    metrics:\n");
        s.push_str(&format!("    - name: Accuracy\n      type: accuracy\n      value: {}\n", r.accuracy));
        s.push_str(&format!("    - name: F1\n      type: f1\n      value: {}\n", r.f1));
    }
    s.push_str("---\n\n");
    s.push_str(&format!("# {name}\n\n"));
    let base = if base_is_hub {
        format!("[{m}](https://huggingface.co/{m})", m = cfg.model)
    } else {
        format!("`{}`", cfg.model)
    };
    s.push_str(&format!("This model is a fine-tuned version of {base} on the {ds} dataset.\n"));
    if let Some(r) = last {
        s.push_str("It achieves the following results on the evaluation set:\n");
        s.push_str(&format!("- Loss: {:.4}\n- Accuracy: {:.4}\n- F1: {:.4}\n", r.validation_loss, r.accuracy, r.f1));
        if best_row.is_some() {
            s.push_str(&format!(
                "\nThese are the results of the best epoch, {:.1} (step {}), by {}; the saved model is that epoch's.\n",
                r.epoch,
                r.step,
                cfg.metric_for_best.name()
            ));
        }
    }
    s.push_str("\n## Model description\n\n");
    s.push_str(&format!(
        "A `{}` ({:.1}M parameters) that classifies text into {} labels: {}. \
         It was fine-tuned with emotune, which follows the Transformers Trainer recipe in Rust, \
         and loads unchanged with `AutoModelForSequenceClassification`.\n",
        config.arch.classifier_class(),
        n_params as f64 / 1e6,
        config.labels.len(),
        config.labels.join(", ")
    ));
    s.push_str("\n## Intended uses & limitations\n\n");
    s.push_str(
        "Intended for English, short informal text such as social-media posts, classified into one \
         emotion each. It was trained on that kind of text only: expect lower accuracy on long, formal \
         or non-English text, on sarcasm, and on texts expressing several emotions or none. The \
         training labels come from hashtags and are noisy; do not use the predictions for decisions \
         about individuals.\n",
    );
    s.push_str("\n## Training and evaluation data\n\n");
    for split in &dataset.splits {
        s.push_str(&format!("- {}: {} examples\n", split.name, split.len()));
    }
    s.push_str("\n## Training procedure\n\n### Training hyperparameters\n\n");
    s.push_str("The following hyperparameters were used during training:\n");
    s.push_str(&format!("- learning_rate: {}\n", fmt_lr(cfg.learning_rate)));
    s.push_str(&format!("- train_batch_size: {}\n", cfg.train_batch_size));
    s.push_str(&format!("- eval_batch_size: {}\n", cfg.eval_batch_size));
    s.push_str(&format!("- seed: {}\n", cfg.seed));
    s.push_str(&format!(
        "- optimizer: AdamW (torch semantics) with betas=({},{}) and epsilon={} and weight_decay={} (not on biases and LayerNorm weights)\n",
        cfg.adam_beta1,
        cfg.adam_beta2,
        fmt_lr(cfg.adam_epsilon),
        cfg.weight_decay
    ));
    s.push_str(&format!("- lr_scheduler_type: {}\n", cfg.lr_scheduler_type));
    match cfg.max_grad_norm {
        Some(m) => s.push_str(&format!("- max_grad_norm: {m}\n")),
        None => s.push_str("- max_grad_norm: none (no clipping)\n"),
    }
    if cfg.warmup_steps > 0 {
        s.push_str(&format!("- lr_scheduler_warmup_steps: {}\n", cfg.warmup_steps));
    } else if cfg.warmup_ratio > 0.0 {
        s.push_str(&format!("- lr_scheduler_warmup_ratio: {}\n", cfg.warmup_ratio));
    }
    match cfg.max_steps {
        Some(n) => s.push_str(&format!("- training_steps: {n}\n")),
        None => s.push_str(&format!("- num_epochs: {}\n", cfg.num_train_epochs)),
    }
    if let Some(n) = cfg.max_length {
        s.push_str(&format!("- max_length: {n}\n"));
    }
    if let Some(p) = cfg.early_stopping_patience {
        s.push_str(&format!("- early_stopping_patience: {p} ({})\n", cfg.metric_for_best.name()));
    }
    if cfg.group_by_length {
        s.push_str("- group_by_length: True\n");
    }
    if cfg.class_weights == crate::train::ClassWeights::Balanced {
        s.push_str("- class_weights: balanced\n");
    }
    s.push_str("\n### Training results\n\n");
    s.push_str(&format_table(rows));
    if let (Some(i), Some(r)) = (best_row, last) {
        s.push_str(&format!("\nBest: row {} (epoch {:.1}, step {}).\n", i + 1, r.epoch, r.step));
    }
    s.push_str("\n\n### Framework versions\n\n");
    s.push_str(&format!("- emotune {}\n", env!("CARGO_PKG_VERSION")));
    s.push_str(&format!("- candle {}\n", env!("EMOTUNE_CANDLE_VERSION")));
    s.push_str(&format!("- Tokenizers {}\n", env!("EMOTUNE_TOKENIZERS_VERSION")));
    s.push_str(&format!("- safetensors {}\n", env!("EMOTUNE_SAFETENSORS_VERSION")));
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn learning_rates_print_like_python() {
        assert_eq!(super::fmt_lr(2e-5), "2e-05");
        assert_eq!(super::fmt_lr(1e-8), "1e-08");
        assert_eq!(super::fmt_lr(0.0003), "3e-04");
    }
}
