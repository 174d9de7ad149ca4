//! TEI's `POST /tokenize` and `POST /decode`, with the model's own tokenizer (untruncated:
//! they show what the text becomes, and the body limit bounds the work).

use super::api::{self, check_inputs, ApiError};
use super::api::{DecodeRequest, DecodeResponse, InputIds, Inputs, SimpleToken, TokenizeRequest, TokenizeResponse};
use super::handlers::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;

/// The tokens of each input, with their character offsets.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse, description = "The tokens of each input")))]
pub async fn tokenize(State(st): State<Arc<AppState>>, body: api::Body) -> Response {
    let started = Instant::now();
    let resp = match tokenize_inner(&st, body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    st.metrics.observe_request("/tokenize", resp.status().as_u16(), started.elapsed());
    resp
}

async fn tokenize_inner(st: &Arc<AppState>, body: api::Body) -> Result<TokenizeResponse, ApiError> {
    let req: TokenizeRequest = api::object_body(body)?;
    let texts = match req.inputs {
        Inputs::One(t) => vec![t],
        Inputs::Many(v) => v,
    };
    check_inputs(&texts, st.cfg.max_client_batch_size)?;
    let tokenizer = st.tokenizer.clone();
    let add_special = req.add_special_tokens;
    let tokens =
        off_runtime(move || texts.iter().map(|t| tokens_of(&tokenizer, t, add_special)).collect::<Result<Vec<_>, _>>())
            .await?;
    Ok(TokenizeResponse(tokens?))
}

/// One text's tokens as TEI lists them: special tokens without offsets, others with their
/// span of the input in characters.
fn tokens_of(tokenizer: &Tokenizer, text: &str, add_special: bool) -> Result<Vec<SimpleToken>, ApiError> {
    let enc = tokenizer
        .encode_char_offsets(text, add_special)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Tokenizer", e.to_string()))?;
    let chars: Vec<char> = text.chars().collect();
    let parts = enc.get_ids().iter().zip(enc.get_offsets()).zip(enc.get_special_tokens_mask()).zip(enc.get_tokens());
    Ok(parts
        .map(|(((&id, &(start, stop)), &special), token)| {
            if special == 1 {
                SimpleToken { id, text: token.clone(), special: true, start: None, stop: None }
            } else {
                let text = chars.get(start..stop.min(chars.len())).map(|c| c.iter().collect()).unwrap_or_default();
                SimpleToken { id, text, special: false, start: Some(start), stop: Some(stop) }
            }
        })
        .collect())
}

/// The text of each id sequence.
#[utoipa::path(post, path = "/decode", request_body = DecodeRequest,
    responses((status = 200, body = DecodeResponse, description = "The text of each sequence")))]
pub async fn decode(State(st): State<Arc<AppState>>, body: api::Body) -> Response {
    let started = Instant::now();
    let resp = match decode_inner(&st, body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    st.metrics.observe_request("/decode", resp.status().as_u16(), started.elapsed());
    resp
}

async fn decode_inner(st: &Arc<AppState>, body: api::Body) -> Result<DecodeResponse, ApiError> {
    let req: DecodeRequest = api::object_body(body)?;
    let seqs = match req.ids {
        InputIds::One(ids) => vec![ids],
        InputIds::Many(v) if v.is_empty() => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", "`ids` cannot be empty"));
        }
        InputIds::Many(v) => v,
    };
    if seqs.len() > st.cfg.max_client_batch_size {
        let msg = format!("batch size {} > maximum allowed batch size {}", seqs.len(), st.cfg.max_client_batch_size);
        return Err(ApiError::validation(StatusCode::PAYLOAD_TOO_LARGE, msg));
    }
    let vocab = st.tokenizer.get_vocab_size(true) as u32;
    if let Some((i, &id)) =
        seqs.iter().enumerate().find_map(|(i, s)| s.iter().find(|&&id| id >= vocab).map(|id| (i, id)))
    {
        let msg = format!("sequence {i}: id {id} is not in the vocabulary (size {vocab})");
        return Err(ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, msg));
    }
    let tokenizer = st.tokenizer.clone();
    let skip = req.skip_special_tokens;
    let texts = off_runtime(move || {
        seqs.iter()
            .map(|ids| {
                tokenizer
                    .decode(ids, skip)
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Tokenizer", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(DecodeResponse(texts?))
}

/// Runs tokenizer work on the blocking pool, so the async threads keep answering.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e.to_string()))
}
