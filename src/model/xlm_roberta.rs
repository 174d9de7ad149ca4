//! XLM-RoBERTa (`modeling_xlm_roberta.py`): the RoBERTa model of [`super::roberta`] under its own
//! `model_type` and class; the weights keep RoBERTa's names (`roberta.*`, `classifier.*`).

use super::arch::{Architecture, Names};
use super::roberta;
use anyhow::Result;
use serde_json::Value;

const NAMES: Names = Names {
    model_type: "xlm-roberta",
    classifier_class: "XLMRobertaForSequenceClassification",
    weight_prefix: "roberta.",
    token_types: false,
};

/// Reads and checks an XLM-RoBERTa `config.json` (the registry's entry point).
pub fn parse_config(config: &Value) -> Result<Box<dyn Architecture>> {
    Ok(Box::new(roberta::read_config(config, &NAMES, "XLM-RoBERTa")?))
}
