//! `config.json`: the architecture (parsed by its own file through [`super::registry`]), the
//! label names and the problem type, read the way Transformers reads them. The raw JSON is kept
//! so that a saved model keeps every field it came with.

use super::arch::Architecture;
use super::registry;
use super::task::Task;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// A parsed `config.json`.
#[derive(Debug)]
pub struct ModelConfig {
    pub arch: Box<dyn Architecture>,
    /// Label names in id order (`id2label`); Transformers' `LABEL_0, LABEL_1` when absent.
    pub labels: Vec<String>,
    /// From `problem_type`: one label per text, or several.
    pub task: Task,
    /// Every field of the file, so that saving keeps what it came with.
    pub raw: Map<String, Value>,
}

impl Clone for ModelConfig {
    fn clone(&self) -> Self {
        ModelConfig { arch: self.arch.clone_box(), labels: self.labels.clone(), task: self.task, raw: self.raw.clone() }
    }
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
        let raw = match value {
            Value::Object(m) => m,
            _ => bail!("config.json: expected a JSON object"),
        };
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("config.json: missing field \"model_type\""))?;
        let arch = registry::parse(model_type, &Value::Object(raw.clone()))?;
        let labels = parse_labels(&raw)?;
        let task = Task::from_problem_type(raw.get("problem_type").and_then(Value::as_str))?;
        Ok(ModelConfig { arch, labels, task, raw })
    }

    pub fn model_type(&self) -> &'static str {
        self.arch.model_type()
    }

    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }

    /// Replaces the label set (for fine-tuning on a dataset with its own labels).
    pub fn set_labels(&mut self, labels: Vec<String>) {
        self.labels = labels;
    }

    /// The config of the fine-tuned classifier: the base fields plus `architectures`,
    /// `id2label`, `label2id` and `problem_type`.
    pub fn to_classifier_json(&self) -> Value {
        let mut m = self.raw.clone();
        // What describes the base model, not this one: where it was loaded from, and the
        // Transformers version that wrote it.
        m.remove("_name_or_path");
        m.remove("transformers_version");
        m.insert("emotune_version".into(), Value::String(env!("CARGO_PKG_VERSION").into()));
        m.insert("architectures".into(), Value::Array(vec![Value::String(self.arch.classifier_class().into())]));
        let id2label: Map<String, Value> =
            self.labels.iter().enumerate().map(|(i, l)| (i.to_string(), Value::String(l.clone()))).collect();
        let label2id: Map<String, Value> =
            self.labels.iter().enumerate().map(|(i, l)| (l.clone(), Value::from(i))).collect();
        m.insert("id2label".into(), Value::Object(id2label));
        m.insert("label2id".into(), Value::Object(label2id));
        m.insert("problem_type".into(), Value::String(self.task.problem_type().into()));
        Value::Object(m)
    }
}

fn parse_labels(raw: &Map<String, Value>) -> Result<Vec<String>> {
    let n_from_field = raw.get("num_labels").and_then(Value::as_u64).map(|n| n as usize);
    let Some(id2label) = raw.get("id2label") else {
        let n = n_from_field.unwrap_or(2);
        return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
    };
    let map = id2label.as_object().ok_or_else(|| anyhow!("config.json: id2label must be an object"))?;
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        let id: usize = k.parse().map_err(|_| anyhow!("config.json: id2label key {k:?} is not an integer"))?;
        let name = v.as_str().ok_or_else(|| anyhow!("config.json: id2label[{k:?}] is not a string"))?;
        pairs.push((id, name.to_string()));
    }
    pairs.sort();
    for (i, (id, _)) in pairs.iter().enumerate() {
        if *id != i {
            bail!("config.json: id2label ids must be 0..{} without gaps (found {id})", pairs.len());
        }
    }
    if pairs.is_empty() {
        bail!("config.json: id2label is empty");
    }
    let mut first_id: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (id, name) in &pairs {
        if let Some(earlier) = first_id.insert(name, *id) {
            bail!(
                "config.json: id2label gives \"{}\" to ids {earlier} and {id}; label names must be distinct",
                crate::display::label(name)
            );
        }
    }
    Ok(pairs.into_iter().map(|(_, n)| n).collect())
}
