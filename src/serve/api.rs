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
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

/// What [`check_inputs`] accepts: a text with a character other than white space (`\S`), or a
/// non-empty list of them. Written by hand because the derive cannot put limits on an untagged
/// enum's variants.
impl utoipa::PartialSchema for Inputs {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        inputs_schema(None)
    }
}

impl ToSchema for Inputs {}

/// [`Inputs`]' schema, with the server's `--max-client-batch-size` where it is known.
pub fn inputs_schema(max_batch: Option<usize>) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    {
        let text = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .pattern(Some(r"\S"))
                .description(Some("A text with at least one character that is not white space"))
        };
        let batch = ArrayBuilder::new().items(text()).min_items(Some(1)).max_items(max_batch);
        OneOfBuilder::new().item(text()).item(batch).into()
    }
}

/// Which end of a too-long text is cut. `Left` is read (TEI takes it) only to be refused with
/// a message that says so; the schema lists what is served.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum TruncationDirection {
    Right,
    Left,
}

impl utoipa::PartialSchema for TruncationDirection {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let only = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["Right"]));
        only.description(Some("Texts are cut on the right (`Left` is refused)")).into()
    }
}

impl ToSchema for TruncationDirection {}

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
    #[serde(default, deserialize_with = "optional_count")]
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
    #[serde(default, deserialize_with = "object_or_null")]
    pub parameters: Option<Parameters>,
}

/// `T` from a JSON object (or `null`), never from an array: serde's derive also reads a struct
/// from a list of its fields in order, which the schema does not allow.
fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v @ serde_json::Value::Object(_) => serde_json::from_value(v).map(Some).map_err(D::Error::custom),
        other => Err(D::Error::custom(format!("expected an object, found {other}"))),
    }
}

/// A request body as `T`, which must come as a JSON object: a rejected body keeps its status
/// (400 syntax, 415 content type), and an array in place of the object is refused with 422.
pub fn object_body<T: serde::de::DeserializeOwned>(
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<T, ApiError> {
    let Json(value) = body.map_err(json_error)?;
    if !value.is_object() {
        return Err(ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
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
pub enum InputIds {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for InputIds {
    /// As the schema reads them: an id is a JSON integer, which may be written `3.0`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<InputIds, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let ids = |v: &[Value]| -> Result<Vec<u32>, D::Error> {
            v.iter()
                .map(|x| {
                    whole(x)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| D::Error::custom(format!("{x} is not a token id")))
                })
                .collect()
        };
        match Value::deserialize(d)? {
            Value::Array(v) if v.iter().all(Value::is_array) && !v.is_empty() => {
                v.iter().map(|s| ids(s.as_array().expect("checked"))).collect::<Result<_, _>>().map(InputIds::Many)
            }
            Value::Array(v) => ids(&v).map(InputIds::One),
            other => Err(D::Error::custom(format!("expected a list of token ids or of lists, found {other}"))),
        }
    }
}

/// A JSON number that is a whole non-negative number (`3` or `3.0`, as JSON Schema's
/// `integer` reads it), if it is one.
fn whole(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(64)).map(|f| f as u64))
}

/// An optional count that the schema calls an integer: `null`, `3` or `3.0`; one past what
/// `usize` holds (any is more than the labels) reads as the largest.
pub(super) fn optional_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    let huge = v.as_f64().is_some_and(|f| f.fract() == 0.0 && f >= usize::MAX as f64);
    let count = whole(&v).and_then(|n| usize::try_from(n).ok()).or(huge.then_some(usize::MAX));
    count.map(Some).ok_or_else(|| D::Error::custom(format!("{v} is not a count")))
}

impl utoipa::PartialSchema for InputIds {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        input_ids_schema(None)
    }
}

impl ToSchema for InputIds {}

/// [`InputIds`]' schema, with the server's `--max-client-batch-size` and the tokenizer's
/// vocabulary size where they are known.
pub fn input_ids_schema(limits: Option<(usize, u32)>) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let sequence = || {
        let id = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(limits.map(|(_, vocab)| vocab.saturating_sub(1)));
        ArrayBuilder::new().items(id)
    };
    let batch = ArrayBuilder::new().items(sequence()).max_items(limits.map(|(batch, _)| batch));
    OneOfBuilder::new().item(sequence()).item(batch).into()
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

/// A request body as the handlers take it: JSON, or why it was rejected.
pub type Body = Result<Json<serde_json::Value>, JsonRejection>;

/// Rejected JSON: its status (400 syntax, 415 content type, 422 fields) and message.
pub fn json_error(e: JsonRejection) -> ApiError {
    ApiError::validation(e.status(), e.body_text())
}

/// True when `text` has no character but white space, as a JSON Schema `\S` pattern reads it
/// in the clients that check it (Python's `re` also counts U+001C-U+001F, the information
/// separators, as white space; Rust's `char::is_whitespace` does not).
pub fn blank(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
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
    if let Some(i) = texts.iter().position(|t| blank(t)) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", format!("input {i} is empty")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_as_the_schema_types_them() {
        // JSON Schema's `integer` includes 3.0; serde's u32 does not
        let ids: InputIds = serde_json::from_str("[1, 2.0, 3]").unwrap();
        assert!(matches!(ids, InputIds::One(v) if v == [1, 2, 3]));
        let ids: InputIds = serde_json::from_str("[[1], [2.0]]").unwrap();
        assert!(matches!(ids, InputIds::Many(v) if v == [vec![1], vec![2]]));
        assert!(serde_json::from_str::<InputIds>("[1.5]").is_err());
        assert!(serde_json::from_str::<InputIds>("[-1]").is_err());
        assert!(serde_json::from_str::<InputIds>("[4294967296]").is_err(), "past u32");
        let p: Parameters = serde_json::from_str(r#"{"top_k": 2.0}"#).unwrap();
        assert_eq!(p.top_k, Some(2));
        let p: Parameters = serde_json::from_str(r#"{"top_k": 3.3e19}"#).unwrap();
        assert_eq!(p.top_k, Some(usize::MAX), "more than any model's labels");
        assert!(serde_json::from_str::<Parameters>(r#"{"top_k": 2.5}"#).is_err());
    }

    #[test]
    fn parameters_come_as_an_object_and_blank_texts_as_the_schema_reads_them() {
        let r = |body: &str| serde_json::from_str::<PredictRequest>(body);
        assert!(r(r#"{"inputs": "a", "parameters": [null, null]}"#).is_err(), "serde would read a list as the struct");
        assert!(r(r#"{"inputs": "a", "parameters": null}"#).unwrap().parameters.is_none());
        assert!(r(r#"{"inputs": "a", "parameters": {}}"#).unwrap().parameters.is_some());
        // `\S` in the schema: Python's `re` counts U+001C-U+001F as white space
        assert!(blank(" \t\u{1c}\u{a0}") && blank(""));
        assert!(!blank(" a ") && !blank("\u{feff}"));
    }
}
