//! The explanation flags shared by `predict` and `eval`, the JSON of an explanation, and how a
//! label given by name or id is found.

use super::{Explanation, Options, Target, Word};
use anyhow::{bail, Result};
use serde_json::Value;

/// How explanations are computed (`--explain-steps`, `--explain-target`), for the commands that
/// explain.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ExplainHow {
    /// Integrated Gradients: Gauss-Legendre points between the baseline (the text's tokens
    /// replaced by the padding token) and the text [default: 32].
    #[arg(long, value_name = "N", help_heading = "Explanations")]
    pub explain_steps: Option<usize>,
    /// What is attributed: the label's logit, or its probability (softmax; sigmoid for a
    /// multi-label model) [default: logit].
    #[arg(long, value_enum, value_name = "OUTPUT", help_heading = "Explanations")]
    pub explain_target: Option<Target>,
}

impl ExplainHow {
    /// The options, refused where `flag` (the switch that turns explanations on) is off: the
    /// settings would change nothing.
    pub fn options(&self, on: bool, flag: &str) -> Result<Option<Options>> {
        if !on {
            if self.explain_steps.is_some() || self.explain_target.is_some() {
                bail!("--explain-steps and --explain-target apply to explanations: add {flag}");
            }
            return Ok(None);
        }
        let d = Options::default();
        let o = Options {
            steps: self.explain_steps.unwrap_or(d.steps),
            target: self.explain_target.unwrap_or(d.target),
            autocast: None,
        };
        o.check()?;
        Ok(Some(o))
    }
}

/// The label id of `given` (`what` names where it came from in the message): a label's name, or
/// an id below the number of labels.
pub fn label_id(given: &str, labels: &[String], what: &str) -> Result<usize> {
    if let Some(i) = labels.iter().position(|l| l == given) {
        return Ok(i);
    }
    match given.parse::<usize>() {
        Ok(i) if i < labels.len() => Ok(i),
        _ => bail!("{what} {given:?} is not one of this model's labels ({})", labels.join(", ")),
    }
}

/// One explanation as the CLI's JSON lines and the server's `/explain` give it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ExplanationJson {
    /// The label explained.
    pub label: String,
    pub label_id: usize,
    /// `logit` or `probability`: what the attributions are of.
    pub target: Target,
    /// Always `integrated_gradients` (Gauss-Legendre points, Captum's default).
    pub method: &'static str,
    pub steps: usize,
    /// `F(text) - F(baseline)`: what the attributions add up to, up to `delta`.
    pub difference: f32,
    /// Captum's convergence delta: the attributions' sum minus `difference`.
    pub delta: f32,
    /// The text's words, special tokens left out.
    pub words: Vec<Word>,
    /// Every token, special ones included.
    pub tokens: Vec<TokenJson>,
}

/// A token as the vocabulary spells it, with its characters of the text.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TokenJson {
    pub token: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

impl ExplanationJson {
    pub fn new(e: &Explanation, labels: &[String]) -> ExplanationJson {
        let tokens = e.tokens.iter().map(|t| TokenJson {
            token: t.span.token.clone(),
            start: t.span.start,
            end: t.span.end,
            score: t.score,
        });
        ExplanationJson {
            label: labels[e.label].clone(),
            label_id: e.label,
            target: e.target,
            method: "integrated_gradients",
            steps: e.steps,
            difference: e.difference,
            delta: e.delta,
            words: e.words.clone(),
            tokens: tokens.collect(),
        }
    }

    /// One line for a reader: the label, then `text` with its words coloured (on a terminal) or
    /// its eight strongest words with their scores, strongest first (elsewhere; the JSON has all).
    pub fn describe(&self, text: &str, colour: bool) -> String {
        let head = format!("{} ({}, δ {:+.1e}):", crate::display::label(&self.label), self.target.name(), self.delta);
        if colour {
            return format!("{head} {}", super::render_terminal(text, &self.words));
        }
        let mut strongest: Vec<&Word> = self.words.iter().collect();
        strongest.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
        let words: Vec<String> = strongest
            .iter()
            .take(8)
            .map(|w| format!("{} {:+.3}", crate::display::clip(&w.text, 24), w.score))
            .collect();
        format!("{head} {}", words.join(", "))
    }
}

/// [`ExplanationJson`] as a JSON value.
pub fn explanation_json(e: &Explanation, labels: &[String]) -> Value {
    serde_json::to_value(ExplanationJson::new(e, labels)).expect("an explanation serialises")
}
