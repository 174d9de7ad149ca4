//! Text → padded token batches ([`Batch`]) with the model's own `tokenizer.json`.

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// One padded batch of token ids, ready for a forward pass.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]` u32 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]` f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `[batch, seq]` u32 segment ids (BERT); zeros when `None`.
    pub token_type_ids: Option<Tensor>,
}

impl Batch {
    /// Builds a batch from rows already padded to one length.
    pub fn from_rows(ids: &[Vec<u32>], mask: &[Vec<u32>], device: &Device) -> Result<Batch> {
        let b = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        let flat_ids: Vec<u32> = ids.iter().flatten().copied().collect();
        let flat_mask: Vec<f32> = mask.iter().flatten().map(|&m| m as f32).collect();
        anyhow::ensure!(flat_ids.len() == b * s && flat_mask.len() == b * s, "rows of a batch must share one length");
        Ok(Batch {
            input_ids: Tensor::from_vec(flat_ids, (b, s), device)?,
            attention_mask: Tensor::from_vec(flat_mask, (b, s), device)?,
            token_type_ids: None,
        })
    }

    pub fn dims(&self) -> (usize, usize) {
        let d = self.input_ids.dims();
        (d[0], d[1])
    }
}

/// A tokenizer configured for a model: truncation at its maximum length, padding per batch.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_length: usize,
    pad_id: u32,
    with_token_types: bool,
}

/// One tokenised text (with special tokens, truncated), before padding.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Whether the text was cut at the maximum length.
    pub truncated: bool,
}

/// Where one token of a text came from (for explanations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpan {
    /// The token as the vocabulary spells it (`##ing`, `Ġworld`).
    pub token: String,
    /// Characters (Unicode scalar values, as Python indexes a `str`) `start..end` of the text.
    pub start: usize,
    pub end: usize,
    /// The pre-tokenizer's word the token belongs to (WordPiece's `##` pieces and byte-level
    /// BPE's pieces share their word's); none for special tokens.
    pub word: Option<u32>,
    /// Added by the post-processor (`[CLS]`, `</s>`), not from the text.
    pub special: bool,
}

impl TextEncoder {
    /// Loads `tokenizer.json`; the maximum length is `max_length` when given, else the smaller of
    /// `tokenizer_config.json`'s `model_max_length` and the model's position-embedding count.
    pub fn load(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        max_positions: usize,
        pad_token_id: Option<u32>,
        with_token_types: bool,
        max_length: Option<usize>,
    ) -> Result<TextEncoder> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", tokenizer_json.display()))?;
        let mut model_max = max_positions;
        let mut pad_token: Option<String> = None;
        if let Some(path) = tokenizer_config {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let cfg: Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
            if let Some(n) = cfg.get("model_max_length").and_then(Value::as_f64) {
                if (1.0..1e9).contains(&n) {
                    model_max = model_max.min(n as usize);
                }
            }
            pad_token = cfg.get("pad_token").and_then(|v| v.as_str().map(str::to_string));
        }
        let max_length = match max_length {
            Some(n) if n < 2 => anyhow::bail!("--max-length must be at least 2 (got {n})"),
            Some(n) if n > max_positions => {
                anyhow::bail!("--max-length {n} exceeds the model's {max_positions} position embeddings")
            }
            Some(n) => n,
            None => model_max,
        };
        // Where Transformers finds it: the config, the tokenizer's settings, its padding; a
        // guess (id 0 is a real token in some vocabularies) would pad with it unseen.
        let pad_id = pad_token_id
            .or_else(|| pad_token.as_deref().and_then(|t| tokenizer.token_to_id(t)))
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .ok_or_else(|| {
                anyhow!(
                    "{}: no padding token: config.json has no pad_token_id, tokenizer_config.json no pad_token, \
                     and the vocabulary no [PAD]; set pad_token_id in the model's config.json",
                    tokenizer_json.display()
                )
            })?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| anyhow!("setting truncation: {e}"))?;
        tokenizer.with_padding(None);
        Ok(TextEncoder { tokenizer, max_length, pad_id, with_token_types })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenises `texts` with special tokens, truncating at the maximum length.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokenized>> {
        let encs = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encs
            .into_iter()
            .map(|e| Tokenized {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                truncated: !e.get_overflowing().is_empty(),
            })
            .collect())
    }

    /// One text tokenised as [`Self::tokenize`] does, with where each token came from.
    pub fn tokenize_with_spans(&self, text: &str) -> Result<(Tokenized, Vec<TokenSpan>)> {
        let e = self.tokenizer.encode_char_offsets(text, true).map_err(|e| anyhow!("tokenizing: {e}"))?;
        let spans = (e.get_tokens().iter().zip(e.get_offsets()).zip(e.get_word_ids()).zip(e.get_special_tokens_mask()))
            .map(|(((token, &(start, end)), &word), &special)| TokenSpan {
                token: token.clone(),
                start,
                end,
                word,
                special: special == 1,
            })
            .collect();
        let row = Tokenized {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            truncated: !e.get_overflowing().is_empty(),
        };
        Ok((row, spans))
    }

    /// The id that pads batches (and replaces a text's tokens in an explanation's baseline).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token counts (with special tokens) of `texts` before any truncation.
    pub fn token_lengths(&self, texts: &[&str]) -> Result<Vec<usize>> {
        let mut untruncated = self.tokenizer.clone();
        untruncated.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
        let encs = untruncated.encode_batch(texts.to_vec(), true).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encs.iter().map(|e| e.get_ids().len()).collect())
    }

    /// Pads `rows` to the longest one and makes a [`Batch`] on `device`.
    pub fn batch(&self, rows: &[&Tokenized], device: &Device) -> Result<Batch> {
        let longest = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let pad = |v: &[u32], fill: u32| -> Vec<u32> {
            let mut out = v.to_vec();
            out.resize(longest, fill);
            out
        };
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| pad(&r.ids, self.pad_id)).collect();
        let mask: Vec<Vec<u32>> = rows.iter().map(|r| pad(&vec![1; r.ids.len()], 0)).collect();
        let mut batch = Batch::from_rows(&ids, &mask, device)?;
        if self.with_token_types {
            let types: Vec<u32> = rows.iter().flat_map(|r| pad(&r.type_ids, 0)).collect();
            batch.token_type_ids = Some(Tensor::from_vec(types, (rows.len(), longest), device)?);
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer over `words`, written to `dir/tokenizer.json`.
    fn tokenizer_file(dir: &Path, words: &[&str]) -> std::path::PathBuf {
        let vocab: serde_json::Map<String, Value> =
            words.iter().enumerate().map(|(i, w)| (w.to_string(), serde_json::json!(i))).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    #[test]
    fn the_padding_token_is_found_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with_pad = tokenizer_file(dir.path(), &["hello", "[UNK]", "[PAD]"]);
        let enc = TextEncoder::load(&with_pad, None, 16, None, false, None).unwrap();
        assert_eq!(enc.pad_id, 2, "the vocabulary's [PAD]");
        let enc = TextEncoder::load(&with_pad, None, 16, Some(1), false, None).unwrap();
        assert_eq!(enc.pad_id, 1, "config.json's pad_token_id first");
        let without = tokenizer_file(dir.path(), &["hello", "[UNK]"]);
        let e = TextEncoder::load(&without, None, 16, None, false, None).err().expect("no padding token");
        assert!(format!("{e:#}").contains("no padding token"), "{e:#}");
    }
}
