//! The supported architectures, by `model_type`. Adding one: its file in `model/` and one line
//! here.

use super::arch::Architecture;
use super::{bert, distilbert, roberta, xlm_roberta};
use anyhow::{bail, Result};
use serde_json::Value;

/// Parses a whole `config.json` object into an architecture.
type Parse = fn(&Value) -> Result<Box<dyn Architecture>>;

const ARCHITECTURES: &[(&str, Parse)] = &[
    ("distilbert", distilbert::parse_config),
    ("bert", bert::parse_config),
    ("roberta", roberta::parse_config),
    ("xlm-roberta", xlm_roberta::parse_config),
];

/// The architecture of `config` (a `config.json` object) by its `model_type`.
pub fn parse(model_type: &str, config: &Value) -> Result<Box<dyn Architecture>> {
    match ARCHITECTURES.iter().find(|(name, _)| *name == model_type) {
        Some((_, parse)) => parse(config),
        None => bail!("config.json: unsupported model_type {model_type:?} (supported: {})", supported().join(", ")),
    }
}

/// The `model_type`s that can be loaded.
pub fn supported() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|(name, _)| *name).collect()
}
