//! emotune: fine-tune, evaluate and serve transformer encoders (DistilBERT, BERT) that
//! classify text by emotion, matching Hugging Face Transformers number for number.

pub mod bench;
pub mod card;
pub mod check;
pub mod cli;
pub mod cpu;
pub mod data;
pub mod device;
pub mod display;
pub mod eval;
pub mod explain;
pub mod fsx;
pub mod hub;
pub mod infer;
pub mod label_errors;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
#[cfg(feature = "python")]
pub mod python;
pub mod serve;
pub mod sync;
pub mod tokenize;
pub mod train;
pub mod weights;
