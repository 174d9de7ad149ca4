//! Prediction of a file of any size into a file (`predict --input FILE --output FILE`): texts are
//! read, classified and written a chunk at a time, so memory is bounded by the chunk. The output
//! is JSON lines (`.jsonl`: `predict`'s lines plus the input's `line`) or parquet (`.parquet`:
//! `line`, `text`, `label`, `score`, one float32 column per label named by it, and `labels`, a
//! list, for a multi-label model), written to a temporary sibling and renamed into place when
//! complete.

use super::output::prediction_json;
use super::{Prediction, Predictor};
use crate::data::stream::TextStream;
use crate::data::InputText;
use crate::fsx::AtomicFile;
use crate::model::Task;
use anyhow::{anyhow, bail, Context, Result};
use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

/// How many texts are read, classified and written at a time by default.
pub const DEFAULT_CHUNK: usize = 4096;

/// What went in and came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Rows of the input, classifiable or not.
    pub rows_in: usize,
    pub rows_out: usize,
    /// Rows left out (`--skip-bad-rows`).
    pub skipped: usize,
}

enum Writer {
    Jsonl(BufWriter<std::fs::File>),
    Parquet(Box<ArrowWriter<std::fs::File>>, Arc<Schema>),
}

/// The parquet columns: the fixed ones, a float32 column per label, and `labels` for a
/// multi-label model. A label named as a fixed column is refused.
fn schema(labels: &[String], task: Task) -> Result<Arc<Schema>> {
    let fixed = ["line", "text", "label", "score", "labels"];
    if let Some(l) = labels.iter().find(|l| fixed.contains(&l.as_str())) {
        bail!(
            "the model has a label named {l:?}, the name of a fixed column of the parquet output; write .jsonl instead"
        );
    }
    let mut fields = vec![
        Field::new("line", DataType::UInt64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
    ];
    fields.extend(labels.iter().map(|l| Field::new(l, DataType::Float32, false)));
    if task == Task::MultiLabel {
        fields.push(Field::new("labels", DataType::new_list(DataType::Utf8, true), false));
    }
    Ok(Arc::new(Schema::new(fields)))
}

impl Writer {
    fn create(path: &Path, file: std::fs::File, labels: &[String], task: Task, chunk: usize) -> Result<Writer> {
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "jsonl" => Ok(Writer::Jsonl(BufWriter::new(file))),
            "parquet" => {
                let schema = schema(labels, task)?;
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_max_row_group_row_count(Some(chunk))
                    .build();
                let w = ArrowWriter::try_new(file, schema.clone(), Some(props))
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                Ok(Writer::Parquet(Box::new(w), schema))
            }
            _ => bail!("{}: --output writes .jsonl or .parquet", path.display()),
        }
    }

    fn write(&mut self, rows: &[InputText], preds: &[Prediction], labels: &[String], task: Task) -> Result<()> {
        match self {
            Writer::Jsonl(w) => {
                for (row, p) in rows.iter().zip(preds) {
                    let mut line = prediction_json(&row.text, p, labels, task);
                    line["line"] = serde_json::json!(row.line);
                    serde_json::to_writer(&mut *w, &line)?;
                    w.write_all(b"\n")?;
                }
                Ok(())
            }
            Writer::Parquet(w, schema) => {
                let batch = record_batch(schema.clone(), rows, preds, labels, task)?;
                w.write(&batch).map_err(|e| anyhow!("writing parquet: {e}"))?;
                // a row group per chunk: the writer holds no more than one
                w.flush().map_err(|e| anyhow!("writing parquet: {e}"))
            }
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Writer::Jsonl(mut w) => Ok(w.flush()?),
            Writer::Parquet(w, _) => w.close().map(drop).map_err(|e| anyhow!("writing parquet: {e}")),
        }
    }
}

fn record_batch(
    schema: Arc<Schema>,
    rows: &[InputText],
    preds: &[Prediction],
    labels: &[String],
    task: Task,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.line as u64))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.text.as_str()))),
        Arc::new(StringArray::from_iter_values(preds.iter().map(|p| labels[p.label_id].as_str()))),
        Arc::new(Float32Array::from_iter_values(preds.iter().map(|p| p.score))),
    ];
    for l in 0..labels.len() {
        columns.push(Arc::new(Float32Array::from_iter_values(preds.iter().map(|p| p.probs[l]))));
    }
    if task == Task::MultiLabel {
        let mut list = ListBuilder::new(StringBuilder::new());
        for p in preds {
            for &l in &p.labels {
                list.values().append_value(&labels[l]);
            }
            list.append(true);
        }
        columns.push(Arc::new(list.finish()));
    }
    RecordBatch::try_new(schema, columns).context("assembling a parquet batch")
}

/// Classifies every text of `input` into `output`, `chunk` texts at a time in batches of
/// `batch_size` grouped by length ([`Predictor::predict_grouped`]); `on_chunk` is told how many
/// input rows each chunk took.
pub fn predict_file(
    predictor: &Predictor,
    input: &mut TextStream,
    output: &Path,
    (chunk, batch_size): (usize, usize),
    mut on_chunk: impl FnMut(usize),
) -> Result<Counts> {
    if chunk == 0 || batch_size == 0 {
        bail!("--chunk-size and --batch-size must be at least 1");
    }
    let (labels, task) = (predictor.labels(), predictor.task());
    let file = AtomicFile::create(output)?;
    let mut writer = Writer::create(output, file.file()?, labels, task, chunk)?;
    let mut rows_out = 0;
    let mut read = 0;
    while let Some(rows) = input.next_chunk(chunk)? {
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let preds = predictor.predict_grouped(&texts, batch_size)?;
        writer.write(&rows, &preds, labels, task).with_context(|| format!("writing {}", output.display()))?;
        rows_out += rows.len();
        on_chunk(input.rows_read - read);
        read = input.rows_read;
    }
    writer.finish().with_context(|| format!("writing {}", output.display()))?;
    file.commit()?;
    Ok(Counts { rows_in: input.rows_read, rows_out, skipped: input.skipped })
}
