//! The shapes of the HTTP API: text-embeddings-inference's requests, answers and errors, plus
//! the Inference API's `parameters`, and TEI's checks of the inputs. The OpenAPI description is
//! generated from these types (`routes.rs`).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// One text or a batch of texts.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

/// Which end of a too-long text is cut.
#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
pub enum TruncationDirection {
    Right,
    Left,
}

/// The function turning logits into scores (the Inference API's `function_to_apply`).
#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum ScoreFunction {
    Softmax,
    Sigmoid,
    None,
}

/// The Hugging Face Inference API's text-classification parameters.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    /// Only the `top_k` highest-scoring labels (default: all).
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Default: `softmax` for a single-label model, `sigmoid` for a multi-label one.
    pub function_to_apply: Option<ScoreFunction>,
}

/// A classification request. Without `parameters` the answer is TEI's: a list of labels for one
/// text, a list of lists for a batch. With `parameters` (even `{}`) it is the Inference API's:
/// always a list of lists.
#[derive(Deserialize, ToSchema)]
pub struct PredictRequest {
    pub inputs: Inputs,
    /// Cut texts longer than the model's maximum instead of refusing them (default false).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Only `Right` is supported.
    #[serde(default)]
    pub truncation_direction: Option<TruncationDirection>,
    /// Logits instead of probabilities.
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// One label's score.
#[derive(Serialize, ToSchema, Clone)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
}

/// Labels ranked by score, for one text or for each text of a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    One(Vec<Prediction>),
    Many(Vec<Vec<Prediction>>),
}

/// Texts to tokenise.
#[derive(Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub inputs: Inputs,
    /// Add the model's special tokens, such as `[CLS]` and `[SEP]` (default true).
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

/// One token: its id, its text and where it sits in the input (in characters).
#[derive(Serialize, ToSchema)]
pub struct SimpleToken {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// The tokens of each input.
#[derive(Serialize, ToSchema)]
pub struct TokenizeResponse(pub Vec<Vec<SimpleToken>>);

/// Token ids: one sequence or several.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum InputIds {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

/// Ids to turn back into text.
#[derive(Deserialize, ToSchema)]
pub struct DecodeRequest {
    pub ids: InputIds,
    /// Leave out special tokens (default true).
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

/// The text of each sequence.
#[derive(Serialize, ToSchema)]
pub struct DecodeResponse(pub Vec<String>);

/// An error, in TEI's shape.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    pub error_type: String,
}

/// An error in TEI's shape: `{"error": ..., "error_type": ...}`.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into() }
    }

    pub fn validation(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::new(status, "Validation", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message, "error_type": self.kind}))).into_response()
    }
}

/// Rejected JSON: its status (400 syntax, 415 content type, 422 fields) and message.
pub fn json_error(e: JsonRejection) -> ApiError {
    ApiError::validation(e.status(), e.body_text())
}

/// TEI's checks before any work: inputs present, not too many, none empty.
pub fn check_inputs(texts: &[String], max_client_batch_size: usize) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", "`inputs` cannot be empty"));
    }
    if texts.len() > max_client_batch_size {
        let msg = format!("batch size {} > maximum allowed batch size {max_client_batch_size}", texts.len());
        return Err(ApiError::validation(StatusCode::PAYLOAD_TOO_LARGE, msg));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", format!("input {i} is empty")));
    }
    Ok(())
}
