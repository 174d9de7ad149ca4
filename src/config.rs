//! `config.json`: the architecture's shape and the label names, parsed the way Transformers
//! reads them. The raw JSON is kept so that a saved model keeps every field it came with.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

/// The activation of the feed-forward blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x * Φ(x)` with erf (Transformers' `"gelu"`).
    Gelu,
    /// The tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str, field: &str) -> Result<Activation> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => bail!("config.json: unsupported {field} {other:?} (supported: gelu, gelu_new, relu)"),
        })
    }
}

fn d_0_1() -> f64 {
    0.1
}
fn d_0_2() -> f64 {
    0.2
}
fn d_0_02() -> f64 {
    0.02
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-12
}
fn d_absolute() -> String {
    "absolute".into()
}
fn d_2() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "d_0_1")]
    pub dropout: f64,
    #[serde(default = "d_0_1")]
    pub attention_dropout: f64,
    #[serde(default = "d_0_2")]
    pub seq_classif_dropout: f64,
    #[serde(default = "d_gelu")]
    pub activation: String,
    #[serde(default = "d_0_02")]
    pub initializer_range: f64,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_0_1")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_0_1")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "d_2")]
    pub type_vocab_size: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_0_02")]
    pub initializer_range: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "d_absolute")]
    pub position_embedding_type: String,
}

impl DistilBertConfig {
    pub fn activation(&self) -> Activation {
        Activation::parse(&self.activation, "activation").expect("validated when the config was parsed")
    }
}

impl BertConfig {
    pub fn activation(&self) -> Activation {
        Activation::parse(&self.hidden_act, "hidden_act").expect("validated when the config was parsed")
    }
}

#[derive(Debug, Clone)]
pub enum ArchConfig {
    DistilBert(DistilBertConfig),
    Bert(BertConfig),
}

/// A parsed `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: ArchConfig,
    /// Label names in id order (`id2label`); Transformers' `LABEL_0, LABEL_1` when absent.
    pub labels: Vec<String>,
    pub problem_type: Option<String>,
    /// Every field of the file, so that saving keeps what it came with.
    pub raw: Map<String, Value>,
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
        let obj = Value::Object(raw.clone());
        let arch = match model_type {
            "distilbert" => {
                let c: DistilBertConfig =
                    serde_json::from_value(obj).context("config.json: invalid DistilBERT config")?;
                if c.sinusoidal_pos_embds {
                    bail!("config.json: sinusoidal_pos_embds=true is not supported");
                }
                Activation::parse(&c.activation, "activation")?;
                check_heads(c.dim, c.n_heads)?;
                ArchConfig::DistilBert(c)
            }
            "bert" => {
                let c: BertConfig = serde_json::from_value(obj).context("config.json: invalid BERT config")?;
                if c.position_embedding_type != "absolute" {
                    bail!(
                        "config.json: position_embedding_type {:?} is not supported (only \"absolute\")",
                        c.position_embedding_type
                    );
                }
                Activation::parse(&c.hidden_act, "hidden_act")?;
                check_heads(c.hidden_size, c.num_attention_heads)?;
                ArchConfig::Bert(c)
            }
            other => bail!("config.json: unsupported model_type {other:?} (supported: distilbert, bert)"),
        };
        let labels = parse_labels(&raw)?;
        let problem_type = raw.get("problem_type").and_then(Value::as_str).map(str::to_string);
        if let Some(pt) = &problem_type {
            if pt != "single_label_classification" {
                bail!("config.json: problem_type {pt:?} is not supported (only single_label_classification)");
            }
        }
        Ok(ModelConfig { arch, labels, problem_type, raw })
    }

    pub fn model_type(&self) -> &'static str {
        match self.arch {
            ArchConfig::DistilBert(_) => "distilbert",
            ArchConfig::Bert(_) => "bert",
        }
    }

    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }

    pub fn hidden_size(&self) -> usize {
        match &self.arch {
            ArchConfig::DistilBert(c) => c.dim,
            ArchConfig::Bert(c) => c.hidden_size,
        }
    }

    pub fn max_position_embeddings(&self) -> usize {
        match &self.arch {
            ArchConfig::DistilBert(c) => c.max_position_embeddings,
            ArchConfig::Bert(c) => c.max_position_embeddings,
        }
    }

    pub fn initializer_range(&self) -> f64 {
        match &self.arch {
            ArchConfig::DistilBert(c) => c.initializer_range,
            ArchConfig::Bert(c) => c.initializer_range,
        }
    }

    pub fn activation(&self) -> Activation {
        match &self.arch {
            ArchConfig::DistilBert(c) => c.activation(),
            ArchConfig::Bert(c) => c.activation(),
        }
    }

    /// Replaces the label set (for fine-tuning on a dataset with its own labels).
    pub fn set_labels(&mut self, labels: Vec<String>) {
        self.labels = labels;
    }

    /// The Transformers class name of the sequence classifier for this architecture.
    pub fn classifier_class(&self) -> &'static str {
        match self.arch {
            ArchConfig::DistilBert(_) => "DistilBertForSequenceClassification",
            ArchConfig::Bert(_) => "BertForSequenceClassification",
        }
    }

    /// The config of the fine-tuned classifier: the base fields plus `architectures`,
    /// `id2label`, `label2id` and `problem_type`.
    pub fn to_classifier_json(&self) -> Value {
        let mut m = self.raw.clone();
        m.insert("architectures".into(), Value::Array(vec![Value::String(self.classifier_class().into())]));
        let id2label: Map<String, Value> =
            self.labels.iter().enumerate().map(|(i, l)| (i.to_string(), Value::String(l.clone()))).collect();
        let label2id: Map<String, Value> =
            self.labels.iter().enumerate().map(|(i, l)| (l.clone(), Value::from(i))).collect();
        m.insert("id2label".into(), Value::Object(id2label));
        m.insert("label2id".into(), Value::Object(label2id));
        m.insert("problem_type".into(), Value::String("single_label_classification".into()));
        Value::Object(m)
    }
}

fn check_heads(hidden: usize, heads: usize) -> Result<()> {
    if heads == 0 || hidden % heads != 0 {
        bail!("config.json: hidden size {hidden} is not divisible by the number of heads {heads}");
    }
    Ok(())
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
    Ok(pairs.into_iter().map(|(_, n)| n).collect())
}
