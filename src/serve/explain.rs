//! `POST /explain`, our extension of TEI's API: each text's prediction with the Integrated
//! Gradients attributions of its label(s) to its words (as `predict --explain`). Under the same
//! key, body limits, batch size, truncation rule and concurrency permits as `/predict`; an
//! explanation is itself a batch of `steps + 2` copies of its text, so that batch must fit
//! `--max-batch-tokens`, and explanations run one at a time beside the scoring workers.

use super::api::{self, ApiError, Inputs};
use super::handlers::AppState;
use crate::explain::args::{label_id, ExplanationJson};
use crate::explain::{Options, Target, MAX_STEPS};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

/// One of the model's labels, by name (the running server's description lists them).
#[derive(Deserialize)]
#[serde(transparent)]
pub struct LabelName(pub String);

impl utoipa::PartialSchema for LabelName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        label_schema(None)
    }
}

impl ToSchema for LabelName {}

/// [`LabelName`]'s schema: a string, one of `labels` where they are known.
pub fn label_schema(labels: Option<&[String]>) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let s = ObjectBuilder::new().schema_type(Type::String).description(Some("One of the model's labels"));
    s.enum_values(labels.map(<[String]>::to_vec)).into()
}

/// What to explain.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    pub inputs: Inputs,
    /// The label to explain, by name (default: the predicted label; for a multi-label model,
    /// each label at or above its threshold).
    #[serde(default)]
    pub label: Option<LabelName>,
    /// Gauss-Legendre points between the baseline and the text (default 32).
    #[schema(minimum = 1, maximum = 1024)]
    #[serde(default, deserialize_with = "api::optional_count")]
    pub steps: Option<usize>,
    /// What is attributed (default `logit`).
    #[serde(default)]
    pub target: Option<Target>,
    /// Cut texts longer than the model's maximum instead of refusing them (default false).
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// One text's prediction and explanations.
#[derive(Serialize, ToSchema)]
pub struct ExplainedText {
    /// The most probable label and its probability.
    pub label: String,
    pub score: f32,
    /// One per label explained.
    pub explanations: Vec<ExplanationJson>,
}

/// The answer: one object for one text, a list for a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ExplainResponse {
    One(ExplainedText),
    Many(Vec<ExplainedText>),
}

/// Explain predictions: the Integrated Gradients attribution of each text's label(s) to its
/// words and tokens (our extension; not in TEI).
#[utoipa::path(post, path = "/explain", request_body = ExplainRequest,
    responses((status = 200, body = ExplainResponse, description = "Each text's label and its words' attributions")))]
pub async fn explain(State(st): State<Arc<AppState>>, body: api::Body) -> Response {
    let started = Instant::now();
    let resp = match explain_inner(&st, body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    st.metrics.observe_request("/explain", resp.status().as_u16(), started.elapsed());
    resp
}

async fn explain_inner(st: &Arc<AppState>, body: api::Body) -> Result<ExplainResponse, ApiError> {
    let req: ExplainRequest = api::object_body(body)?;
    let invalid = |m: String| ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, m);
    let d = Options::default();
    let opts = Options {
        steps: req.steps.unwrap_or(d.steps),
        target: req.target.unwrap_or(d.target),
        autocast: st.explain_autocast,
    };
    if !(1..=MAX_STEPS).contains(&opts.steps) {
        return Err(invalid(format!("steps must be between 1 and {MAX_STEPS} (got {})", opts.steps)));
    }
    let label = match &req.label {
        Some(l) => Some(label_id(&l.0, st.predictor.labels(), "label").map_err(|e| invalid(format!("{e:#}")))?),
        None => None,
    };
    let (texts, single, _permit) = super::handlers::admit(st, req.inputs)?;
    let rows = super::handlers::tokenize(st, texts.clone(), req.truncate.unwrap_or(false)).await?;
    for (i, r) in rows.iter().enumerate() {
        let tokens = (opts.steps + 2) * r.ids.len();
        if tokens > st.cfg.max_batch_tokens {
            let msg = format!(
                "explaining input {i} runs (steps + 2) x {} tokens = {tokens}, over the maximum batch of {} tokens; \
                 ask for fewer steps or send a shorter text",
                r.ids.len(),
                st.cfg.max_batch_tokens
            );
            return Err(ApiError::validation(StatusCode::PAYLOAD_TOO_LARGE, msg));
        }
    }
    let st = st.clone();
    let answers = tokio::task::spawn_blocking(move || explain_texts(&st, &texts, label, &opts))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::FAILED_DEPENDENCY, "Backend", format!("{e:#}")))?;
    Ok(match single {
        true => ExplainResponse::One(answers.into_iter().next().expect("one input")),
        false => ExplainResponse::Many(answers),
    })
}

/// Predicts and explains `texts`, one explanation at a time.
fn explain_texts(
    st: &AppState,
    texts: &[String],
    label: Option<usize>,
    opts: &Options,
) -> anyhow::Result<Vec<ExplainedText>> {
    let _one_at_a_time = crate::sync::lock(&st.explaining);
    let p = &st.predictor;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let preds = p.predict(&refs, refs.len())?;
    let explained = crate::explain::explain_predictions(p, &refs, &preds, label, opts)?;
    let labels = p.labels();
    Ok(preds
        .iter()
        .zip(explained)
        .map(|(pred, es)| ExplainedText {
            label: labels[pred.label_id].clone(),
            score: pred.score,
            explanations: es.iter().map(|e| ExplanationJson::new(e, labels)).collect(),
        })
        .collect())
}
