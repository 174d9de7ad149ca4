//! The model card (`README.md`) in the form Transformers' Trainer writes it.

use crate::data::Dataset;
use crate::display::last_segment;
use crate::model::{ModelConfig, Task};
use crate::optim::LinearSchedule;
use crate::train::config::{ClassWeights, TrainConfig};
use crate::train::history::{format_table, EpochRow};
use std::fmt::Write;

/// Python's spelling of a float in exponent form (`2e-05` for 2e-5).
fn fmt_lr(x: f64) -> String {
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

/// The card of a fine-tuned model. `rows` are the evaluations; the reported results are the
/// best row's when the saved model is that epoch's (`best_row`), else the last row's.
pub fn model_card(
    cfg: &TrainConfig,
    dataset: &Dataset,
    config: &ModelConfig,
    n_params: usize,
    rows: &[EpochRow],
    best_row: Option<usize>,
    thresholds: Option<&[f32]>,
) -> String {
    let name = cfg.output_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let reported = match best_row {
        Some(i) => rows.get(i),
        None => rows.last(),
    };
    let mut s = front_matter(cfg, dataset, &name, reported);
    write_summary(&mut s, cfg, dataset, &name, reported, best_row.is_some());
    write_description(&mut s, config, dataset, n_params);
    write_data(&mut s, dataset);
    write_hyperparameters(&mut s, cfg);
    if let Some(t) = thresholds {
        write_thresholds(&mut s, cfg, &config.labels, t);
    }
    s.push_str("\n### Training results\n\n");
    s.push_str(&format_table(rows));
    if let (Some(i), Some(r)) = (best_row, reported) {
        let _ = writeln!(s, "\nBest: row {} (epoch {:.1}, step {}).", i + 1, r.epoch, r.step);
    }
    s.push_str("\n\n### Framework versions\n\n");
    let _ = writeln!(s, "- emotune {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(s, "- candle {}", env!("EMOTUNE_CANDLE_VERSION"));
    let _ = writeln!(s, "- Tokenizers {}", env!("EMOTUNE_TOKENIZERS_VERSION"));
    let _ = writeln!(s, "- safetensors {}", env!("EMOTUNE_SAFETENSORS_VERSION"));
    s
}

/// The YAML metadata the Hub reads: base model, dataset, and the model-index results.
fn front_matter(cfg: &TrainConfig, dataset: &Dataset, name: &str, reported: Option<&EpochRow>) -> String {
    let ds = last_segment(&dataset.name);
    // A license only when the user chose one (`--license`): the data's and the base model's
    // terms are theirs to weigh.
    let mut s = String::from("---\nlibrary_name: transformers\n");
    if let Some(l) = &cfg.license {
        let _ = writeln!(s, "license: {}", yaml_str(l));
    }
    let _ = writeln!(s, "base_model: {}", yaml_str(&cfg.model));
    s.push_str("tags:\n- emotune\n- text-classification\n");
    let _ = writeln!(s, "datasets:\n- {}", yaml_str(ds));
    s.push_str("metrics:\n- accuracy\n- f1\n");
    let _ = writeln!(s, "model-index:\n- name: {}\n  results:", yaml_str(name));
    if let Some(r) = reported {
        s.push_str("  - task:\n      name: Text Classification\n      type: text-classification\n");
        let _ = writeln!(s, "    dataset:\n      name: {}\n      type: {}", yaml_str(ds), yaml_str(&dataset.name));
        if let Some(c) = &dataset.config_name {
            let _ = writeln!(s, "      config: {}", yaml_str(c));
        }
        // A slice in the datasets library's own notation, so the result is not taken for the split's.
        match dataset.split("validation").filter(|v| v.sliced_from.is_some()) {
            Some(v) => _ = writeln!(s, "      split: validation[:{}]", v.len()),
            None => s.push_str("      split: validation\n"),
        }
        if let Some(c) = &dataset.config_name {
            let _ = writeln!(s, "      args: {}", yaml_str(c));
        }
        s.push_str("    metrics:\n");
        let (accuracy, f1) = metric_names(dataset);
        let _ = writeln!(s, "    - name: {accuracy}\n      type: accuracy\n      value: {}", r.accuracy);
        let _ = writeln!(s, "    - name: {f1}\n      type: f1\n      value: {}", r.f1);
    }
    s.push_str("---\n\n");
    s
}

fn write_summary(s: &mut String, cfg: &TrainConfig, dataset: &Dataset, name: &str, r: Option<&EpochRow>, best: bool) {
    let _ = writeln!(s, "# {name}\n");
    let base_is_hub = !std::path::Path::new(&cfg.model).exists();
    let base = if base_is_hub {
        let at = cfg.revision.as_ref().map_or(String::new(), |r| format!(" (revision `{r}`)"));
        format!("[{m}](https://huggingface.co/{m}){at}", m = cfg.model)
    } else {
        format!("`{}`", cfg.model)
    };
    let _ = writeln!(s, "This model is a fine-tuned version of {base} on the {} dataset.", last_segment(&dataset.name));
    if let Some(r) = r {
        match dataset.split("validation").and_then(|v| v.sliced_from.map(|of| (v.len(), of))) {
            Some((n, of)) => {
                _ = writeln!(
                    s,
                    "It achieves the following results on the first {n} of the validation split's {of} examples \
                 (`--eval-limit {n}`), not on the whole split:"
                )
            }
            None => s.push_str("It achieves the following results on the evaluation set:\n"),
        }
        let (accuracy, f1) = metric_names(dataset);
        let _ = writeln!(s, "- Loss: {:.4}\n- {accuracy}: {:.4}\n- {f1}: {:.4}", r.validation_loss, r.accuracy, r.f1);
        if best {
            let _ = writeln!(
                s,
                "\nThese are the results of the best epoch, {:.1} (step {}), by {}; the saved model is that epoch's.",
                r.epoch,
                r.step,
                cfg.metric_for_best.name()
            );
        }
    }
}

/// What the two reported metrics are: for one label per text the Trainer recipe's accuracy and
/// weighted F1 (named as its card names them), for several the share of texts whose whole label
/// set is right and the micro-averaged F1.
fn metric_names(dataset: &Dataset) -> (&'static str, &'static str) {
    match dataset.multi_label {
        false => ("Accuracy", "F1"),
        true => ("Exact-match accuracy", "Micro F1"),
    }
}

/// The training texts' median length in words and the share that are mostly ASCII letters.
fn text_profile(dataset: &Dataset) -> Option<(usize, usize, f64)> {
    let train = dataset.split("train")?;
    let mut words: Vec<usize> = train.examples.iter().map(|e| e.text.split_whitespace().count()).collect();
    if words.is_empty() {
        return None;
    }
    words.sort_unstable();
    let ascii = |t: &str| {
        let letters: Vec<char> = t.chars().filter(|c| c.is_alphabetic()).collect();
        !letters.is_empty() && letters.iter().filter(|c| c.is_ascii()).count() * 10 >= letters.len() * 9
    };
    let latin = train.examples.iter().filter(|e| ascii(&e.text)).count() as f64 / train.examples.len() as f64;
    Some((train.examples.len(), words[words.len() / 2], latin))
}

fn write_description(s: &mut String, config: &ModelConfig, dataset: &Dataset, n_params: usize) {
    s.push_str("\n## Model description\n\n");
    let _ = writeln!(
        s,
        "A `{}` ({:.1}M parameters) that classifies text into {} labels: {}. \
         It was fine-tuned with emotune, which follows the Transformers Trainer recipe in Rust, \
         and loads unchanged with `AutoModelForSequenceClassification`.",
        config.arch.classifier_class(),
        n_params as f64 / 1e6,
        config.labels.len(),
        config.labels.join(", ")
    );
    s.push_str("\n## Intended uses & limitations\n\n");
    let (each, mixed) = match config.task {
        Task::SingleLabel => ("one emotion each", "on texts expressing several emotions or none"),
        Task::MultiLabel => ("any number of emotions each", "on emotions the raters rarely agreed on"),
    };
    let data = match text_profile(dataset) {
        Some((n, median, latin)) => format!(
            "It learned from {n} training texts of {} (median {median} words; {:.0}% written mostly in \
             unaccented Latin letters), classified into {each}: expect lower accuracy on text unlike them \
             (longer or shorter, another register or language), on sarcasm, and {mixed}.",
            last_segment(&dataset.name),
            latin * 100.0
        ),
        None => format!(
            "It classifies texts into {each}: expect lower accuracy on text unlike its training data, and {mixed}."
        ),
    };
    let _ = writeln!(
        s,
        "{data} Its labels are only as good as the training data's; do not use the predictions for decisions \
         about individuals."
    );
}

/// A multi-label model's thresholds (also in `thresholds.json`).
fn write_thresholds(s: &mut String, cfg: &TrainConfig, labels: &[String], thresholds: &[f32]) {
    let how = if cfg.tune_thresholds {
        "tuned per label on the validation split to maximise each label's F1"
    } else {
        "the same for every label"
    };
    let _ = writeln!(s, "\n### Decision thresholds\n\nA label is predicted when its sigmoid probability reaches its threshold ({how}; `thresholds.json`):\n");
    let cells: Vec<String> = labels.iter().zip(thresholds).map(|(l, t)| format!("{l} {t:.2}")).collect();
    let _ = writeln!(s, "{}", cells.join(", "));
}

fn write_data(s: &mut String, dataset: &Dataset) {
    s.push_str("\n## Training and evaluation data\n\n");
    for split in &dataset.splits {
        let _ = writeln!(s, "- {}: {} examples", split.name, split.len());
    }
}

fn write_hyperparameters(s: &mut String, cfg: &TrainConfig) {
    s.push_str("\n## Training procedure\n\n### Training hyperparameters\n\n");
    s.push_str("The following hyperparameters were used during training:\n");
    let _ = writeln!(s, "- learning_rate: {}", fmt_lr(cfg.learning_rate));
    let _ = writeln!(s, "- train_batch_size: {}", cfg.train_batch_size);
    let _ = writeln!(s, "- eval_batch_size: {}", cfg.eval_batch_size);
    let _ = writeln!(s, "- seed: {}", cfg.seed);
    let _ = writeln!(
        s,
        "- optimizer: AdamW (torch semantics) with betas=({},{}) and epsilon={} and weight_decay={} (not on biases and LayerNorm weights)",
        cfg.adam_beta1,
        cfg.adam_beta2,
        fmt_lr(cfg.adam_epsilon),
        cfg.weight_decay
    );
    let _ = writeln!(s, "- lr_scheduler_type: {}", LinearSchedule::NAME);
    match cfg.clip_norm() {
        Some(m) => {
            let _ = writeln!(s, "- max_grad_norm: {m}");
        }
        None => s.push_str("- max_grad_norm: none (no clipping)\n"),
    }
    if cfg.warmup_steps > 0 {
        let _ = writeln!(s, "- lr_scheduler_warmup_steps: {}", cfg.warmup_steps);
    } else if cfg.warmup_ratio > 0.0 {
        let _ = writeln!(s, "- lr_scheduler_warmup_ratio: {}", cfg.warmup_ratio);
    }
    match cfg.max_steps {
        Some(n) => {
            let _ = writeln!(s, "- training_steps: {n}");
        }
        None => {
            let _ = writeln!(s, "- num_epochs: {}", cfg.num_train_epochs);
        }
    }
    if let Some(n) = cfg.max_length {
        let _ = writeln!(s, "- max_length: {n}");
    }
    if let Some(p) = cfg.early_stopping_patience {
        let _ = writeln!(s, "- early_stopping_patience: {p} ({})", cfg.metric_for_best.name());
    }
    if cfg.group_by_length {
        s.push_str("- group_by_length: True\n");
    }
    if cfg.class_weights == ClassWeights::Balanced {
        s.push_str("- class_weights: balanced\n");
    }
    if cfg.bf16 {
        s.push_str("- mixed_precision_training: bf16 matmuls (float32 weights, optimizer state and loss)\n");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_card_says_when_training_ran_in_bf16() {
        let mut cfg = super::TrainConfig::seed_recipe("m", "out".into());
        let mut card = String::new();
        super::write_hyperparameters(&mut card, &cfg);
        assert!(!card.contains("mixed_precision"), "{card}");
        cfg.bf16 = true;
        card.clear();
        super::write_hyperparameters(&mut card, &cfg);
        assert!(card.contains("- mixed_precision_training: bf16 matmuls"), "{card}");
    }

    /// A dataset of the given texts (one label each, or several) in its train split.
    fn dataset(texts: &[&str], multi_label: bool) -> crate::data::Dataset {
        let examples = texts.iter().map(|t| crate::data::Example { text: t.to_string(), labels: vec![0], line: 1 });
        let examples: Vec<_> = examples.collect();
        let split = crate::data::Split {
            name: "train".into(),
            files: vec!["train.csv".into()],
            file_of: vec![0; examples.len()],
            examples,
            sliced_from: None,
        };
        crate::data::Dataset {
            name: "org/feelings".into(),
            config_name: None,
            labels: vec!["joy".into()],
            splits: vec![split],
            multi_label,
        }
    }

    #[test]
    fn the_card_names_its_metrics_and_describes_its_own_data() {
        let data = dataset(&["a b c", "día de fiesta ñandú", "one two three four five"], false);
        assert_eq!(super::metric_names(&data), ("Accuracy", "F1"));
        assert_eq!(super::metric_names(&dataset(&["x"], true)), ("Exact-match accuracy", "Micro F1"));
        let (n, median, latin) = super::text_profile(&data).unwrap();
        assert_eq!((n, median), (3, 4));
        // "día de fiesta ñandú": 3 of 16 letters accented, under the 90% of plain ones
        assert!((latin - 2.0 / 3.0).abs() < 1e-9, "{latin}");
        let config =
            crate::model::config::ModelConfig::from_json(crate::model::distilbert::BASE_UNCASED_CONFIG).unwrap();
        let mut card = String::new();
        super::write_description(&mut card, &config, &data, 1);
        assert!(card.contains("3 training texts of feelings (median 4 words; 67% written"), "{card}");
        assert!(!card.contains("English"), "nothing said of the data that it does not show: {card}");
    }

    #[test]
    fn the_card_declares_no_license_unless_given_and_says_when_metrics_are_from_a_slice() {
        let mut cfg = super::TrainConfig::seed_recipe("m", "out".into());
        let mut data = dataset(&["a", "b", "c", "d"], false);
        let mut validation = data.splits[0].clone();
        validation.name = "validation".into();
        validation.truncate(2);
        data.splits.push(validation);
        let row = crate::train::EpochRow {
            epoch: 1.0,
            step: 1,
            training_loss: 1.0,
            validation_loss: 0.5,
            accuracy: 0.75,
            f1: 0.7,
            f1_macro: 0.6,
            multi_label: false,
        };
        let card = super::front_matter(&cfg, &data, "out", Some(&row));
        assert!(!card.contains("license:") && card.contains("- emotune\n"), "{card}");
        assert!(!card.contains("generated_from_trainer"));
        assert!(card.contains("split: validation[:2]"), "{card}");
        let mut summary = String::new();
        super::write_summary(&mut summary, &cfg, &data, "out", Some(&row), false);
        assert!(
            summary.contains("on the first 2 of the validation split's 4 examples (`--eval-limit 2`)"),
            "{summary}"
        );
        cfg.license = Some("mit".into());
        assert!(super::front_matter(&cfg, &data, "out", Some(&row)).contains("license: \"mit\"\n"));
    }

    #[test]
    fn learning_rates_print_like_python() {
        assert_eq!(super::fmt_lr(2e-5), "2e-05");
        assert_eq!(super::fmt_lr(1e-8), "1e-08");
        assert_eq!(super::fmt_lr(0.0003), "3e-04");
    }
}
