//! The file formats: parquet, CSV/TSV with a header, JSON lines, `text;label` lines and plain
//! lines of text. Each reader yields rows that remember their line (or parquet row); a row that
//! cannot be used goes to the [`Sink`], which stops at it or records it.
//!
//! Two uses share them: labelled data (a text and a label column; empty texts and labels are
//! problems, blank lines are skipped) and texts to classify (a text column only; every row is
//! kept, empty ones too, for the caller to report).

use super::problems::Sink;
use crate::display::clip;
use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{Array, RecordBatch};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Which columns (or JSON fields) to read: the text, and the label unless only texts are wanted.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub text: &'a str,
    pub label: Option<&'a str>,
    /// Splits a label cell into several labels (multi-label data in CSV/TSV/`text;label`).
    pub separator: Option<&'a str>,
    /// Whether CSV/TSV files start with a header; without one the text is the first column and
    /// the label the second (the original GoEmotions files).
    pub header: bool,
}

impl<'a> Columns<'a> {
    /// Just the text column, of a file with a header.
    pub fn text(text: &'a str) -> Columns<'a> {
        Columns { text, label: None, separator: None, header: true }
    }

    /// The label column among `have`: the one asked for, or `labels` when the default `label`
    /// is missing (the name Hugging Face multi-label datasets use).
    fn label_among(&self, have: &[&str]) -> Option<&'a str> {
        match self.label {
            Some("label") if !have.contains(&"label") && have.contains(&"labels") => Some("labels"),
            other => other,
        }
    }
}

/// A value read from the label column.
#[derive(Debug, Clone)]
pub enum RawLabel {
    Int(i64),
    Name(String),
    /// Several labels of one text (a JSON or parquet list, or a cell split by the separator).
    List(Vec<RawLabel>),
}

#[derive(Debug)]
pub struct RawRow {
    pub text: String,
    /// Always there for labelled data; `None` when only texts are read.
    pub label: Option<RawLabel>,
    /// 1-based line (text formats) or row (parquet).
    pub line: usize,
}

/// Rows of one file, plus the label names its metadata declares (parquet ClassLabel).
pub struct RawFile {
    pub path: PathBuf,
    pub rows: Vec<RawRow>,
    pub class_names: Option<Vec<String>>,
}

/// The extensions of the formats read, for messages (a file without one is read as `.txt`).
pub const EXTENSIONS: &[&str] = &["parquet", "csv", "tsv", "jsonl", "json", "txt"];

/// Reads `path` by its extension: `.txt` (or none) holds `text;label` lines, or one text per
/// line when only texts are read. Anything but a regular file, and an unknown extension, is
/// an error that says so.
pub fn read_file(path: &Path, cols: Columns, sink: &mut Sink) -> Result<RawFile> {
    crate::fsx::check_regular_file(path)?;
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let (rows, class_names) = match ext.as_str() {
        "parquet" => read_parquet(path, cols, sink)?,
        "csv" => (read_delimited(path, b',', cols, sink)?, None),
        "tsv" => (read_delimited(path, b'\t', cols, sink)?, None),
        "jsonl" | "json" => (read_jsonl(path, cols, sink)?, None),
        "txt" | "" if cols.label.is_some() => (read_semicolon(path, cols.separator, sink)?, None),
        "txt" | "" => (read_lines(path, sink)?, None),
        other => bail!(
            "{}: unsupported file type .{} (supported: .{})",
            path.display(),
            clip(other, 20),
            EXTENSIONS.join(", .")
        ),
    };
    Ok(RawFile { path: path.to_path_buf(), rows, class_names })
}

/// Builds a row from its text and label, or reports why it cannot be one. Texts to classify
/// (`cols.label` unset) are always rows.
fn make_row(
    sink: &mut Sink,
    cols: Columns,
    at: (&Path, usize),
    text: &str,
    label: Option<RawLabel>,
) -> Result<Option<RawRow>> {
    let (path, line) = at;
    if cols.label.is_none() {
        return Ok(Some(RawRow { text: text.to_string(), label: None, line }));
    }
    if text.trim().is_empty() {
        let what = if text.is_empty() { "empty text" } else { "whitespace-only text" };
        sink.row(path, line, what.to_string())?;
        return Ok(None);
    }
    if label.is_none() {
        sink.row(path, line, "empty label".to_string())?;
        return Ok(None);
    }
    Ok(Some(RawRow { text: text.to_string(), label, line }))
}

/// A label written as text: an integer id or a name, or with `separator` a list of them; `None`
/// when empty.
fn parse_label(s: &str, separator: Option<&str>) -> Option<RawLabel> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(sep) = separator {
        return Some(RawLabel::List(s.split(sep).filter_map(|part| parse_label(part, None)).collect()));
    }
    Some(match s.parse::<i64>() {
        Ok(i) => RawLabel::Int(i),
        Err(_) => RawLabel::Name(s.to_string()),
    })
}

/// A JSON label: an integer id, a name, or a list of them.
fn json_label(v: &Value, separator: Option<&str>) -> std::result::Result<Option<RawLabel>, String> {
    Ok(match v {
        Value::Number(x) => Some(RawLabel::Int(x.as_i64().ok_or(format!("label {x} is not an integer"))?)),
        Value::String(s) => parse_label(s, separator),
        Value::Array(items) => Some(RawLabel::List(
            items
                .iter()
                .map(|i| json_label(i, None))
                .filter_map(|l| l.transpose())
                .collect::<std::result::Result<_, _>>()?,
        )),
        other => {
            return Err(format!("label {} is neither a string, an integer nor a list", clip(&other.to_string(), 80)))
        }
    })
}

/// Lines of `bytes` (from `path`), each checked to be UTF-8 (1-based numbers; a byte-order mark
/// and the line endings removed). Lines that are not UTF-8 go to `sink` and are left out.
pub fn utf8_lines(bytes: &[u8], path: &Path, sink: &mut Sink) -> Result<Vec<(usize, String)>> {
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        match line_text(raw, i == 0) {
            Ok(line) => out.push((i + 1, line.to_string())),
            Err(e) => sink.row(path, i + 1, format!("invalid UTF-8 ({e})"))?,
        }
    }
    if out.last().is_some_and(|(_, l)| l.is_empty()) {
        out.pop();
    }
    Ok(out)
}

/// One line's bytes (without its `\n`) as text: a trailing `\r` dropped, and on a file's first
/// line the UTF-8 byte-order mark.
pub fn line_text(raw: &[u8], first: bool) -> std::result::Result<&str, std::str::Utf8Error> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let raw = if first { raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw) } else { raw };
    std::str::from_utf8(raw)
}

fn file_lines(path: &Path, sink: &mut Sink) -> Result<Vec<(usize, String)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    utf8_lines(&bytes, path, sink)
}

/// One text per line, empty lines included.
fn read_lines(path: &Path, sink: &mut Sink) -> Result<Vec<RawRow>> {
    Ok(file_lines(path, sink)?.into_iter().map(|(line, text)| RawRow { text, label: None, line }).collect())
}

/// `text;label` lines (the label after the last `;`, split by `separator` when given). Blank
/// lines are skipped.
fn read_semicolon(path: &Path, separator: Option<&str>, sink: &mut Sink) -> Result<Vec<RawRow>> {
    let cols = Columns { text: "text", label: Some("label"), separator: None, header: true };
    let mut rows = Vec::new();
    for (n, line) in file_lines(path, sink)? {
        if line.is_empty() {
            continue;
        }
        let Some((text, label)) = line.rsplit_once(';') else {
            let msg = format!("malformed row (expected `text;label`): {:?}", clip(&line, 80));
            sink.row(path, n, msg)?;
            continue;
        };
        rows.extend(make_row(sink, cols, (path, n), text, parse_label(label, separator))?);
    }
    Ok(rows)
}

/// One JSON line: its text field and, when asked for, its label field.
fn parse_json_line(line: &str, cols: Columns) -> std::result::Result<(String, Option<RawLabel>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let field = |name: &str| obj.get(name).ok_or_else(|| format!("missing field {name:?}"));
    let text = field(cols.text)?.as_str().ok_or_else(|| format!("field {:?} is not a string", cols.text))?;
    let have: Vec<&str> = obj.keys().map(String::as_str).collect();
    let label = match cols.label_among(&have).map(field).transpose()? {
        None => None,
        Some(v) => json_label(v, cols.separator)?,
    };
    Ok((text.to_string(), label))
}

/// JSON lines. Blank lines are skipped in labelled data and empty texts otherwise.
fn read_jsonl(path: &Path, cols: Columns, sink: &mut Sink) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (n, line) in file_lines(path, sink)? {
        if line.trim().is_empty() {
            if cols.label.is_none() {
                rows.push(RawRow { text: String::new(), label: None, line: n });
            }
            continue;
        }
        match parse_json_line(&line, cols) {
            Ok((text, label)) => rows.extend(make_row(sink, cols, (path, n), &text, label)?),
            Err(msg) => sink.row(path, n, msg)?,
        }
    }
    Ok(rows)
}

/// The text of one JSON line's field `column`, or why it has none.
pub(super) fn json_text(line: &str, column: &str) -> std::result::Result<String, String> {
    parse_json_line(line, Columns::text(column)).map(|(text, _)| text)
}

/// The positions of the text and label columns in a CSV/TSV header.
pub(super) fn header_columns(path: &Path, headers: &csv::ByteRecord, cols: Columns) -> Result<(usize, Option<usize>)> {
    let have: Vec<String> = headers.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
    let col = |name: &str| -> Result<usize> {
        have.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!("{}: no column {name:?} (columns: {})", path.display(), crate::display::labels(&have))
        })
    };
    let names: Vec<&str> = have.iter().map(String::as_str).collect();
    Ok((col(cols.text)?, cols.label_among(&names).map(col).transpose()?))
}

/// CSV or TSV with a header row naming the columns (or, without a header, the text first and
/// the label second).
fn read_delimited(path: &Path, delim: u8, cols: Columns, sink: &mut Sink) -> Result<Vec<RawRow>> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(cols.header)
        .flexible(false)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let (ti, li) = if cols.header {
        let header_err = |e: csv::Error| anyhow!("{}:1: cannot read the header: {e}", path.display());
        header_columns(path, &rdr.byte_headers().map_err(header_err)?.clone(), cols)?
    } else {
        (0, cols.label.map(|_| 1))
    };
    let mut rows = Vec::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                sink.row(path, line, format!("malformed row: {e}"))?;
                // A broken quote or an unequal field count: the reader can go on after it.
                if matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }) {
                    continue;
                }
                break;
            }
        }
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let (Some(text), Some(label)) = (rec.get(ti), li.map_or(Some(None), |i| rec.get(i).map(Some))) else {
            sink.row(
                path,
                line,
                format!("expected the text in column {} and the label in column {}", ti + 1, li.unwrap_or(ti) + 1),
            )?;
            continue;
        };
        let label = label.map(std::str::from_utf8).transpose();
        match (std::str::from_utf8(text), label) {
            (Ok(text), Ok(label)) => {
                let label = label.and_then(|l| parse_label(l, cols.separator));
                rows.extend(make_row(sink, cols, (path, line), text, label)?)
            }
            (Err(e), _) | (_, Err(e)) => sink.row(path, line, format!("invalid UTF-8 ({e})"))?,
        }
    }
    Ok(rows)
}

/// A parquet file, with the ClassLabel names of the label column from its `huggingface`
/// metadata.
fn read_parquet(path: &Path, cols: Columns, sink: &mut Sink) -> Result<(Vec<RawRow>, Option<Vec<String>>)> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("{}: not a valid parquet file: {e}", path.display()))?;
    let schema = builder.schema().clone();
    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let label_col = cols.label_among(&have);
    let class_names = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "huggingface").and_then(|k| k.value.clone()))
        .and_then(|json| label_col.and_then(|l| parquet_class_names(&json, l)));
    for c in std::iter::once(cols.text).chain(label_col) {
        if schema.field_with_name(c).is_err() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            bail!("{}: no column {c:?} (columns: {})", path.display(), have.join(", "));
        }
    }
    let reader = builder.build().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    let mut base = 0;
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| anyhow!("{}: reading parquet: {e}", path.display()))?;
        let column = |c: &str| format!("{}: column {c:?}", path.display());
        let texts = string_column(&batch, cols.text).with_context(|| column(cols.text))?;
        let labels = match label_col {
            Some(l) => label_column(&batch, l).with_context(|| column(l))?,
            None => vec![None; texts.len()],
        };
        for (i, (t, l)) in texts.iter().zip(labels).enumerate() {
            let row = base + i + 1;
            match t {
                Some(t) => rows.extend(make_row(sink, cols, (path, row), t, l)?),
                None => sink.row(path, row, "null text".to_string())?,
            }
        }
        base += texts.len();
    }
    Ok((rows, class_names))
}

/// The ClassLabel names of `label_col` in the `huggingface` metadata: of the column, or of its
/// items for a list of labels (`Sequence`/`List` of ClassLabel).
fn parquet_class_names(json: &str, label_col: &str) -> Option<Vec<String>> {
    let v: Value = serde_json::from_str(json).ok()?;
    let feature = v.get("info")?.get("features")?.get(label_col)?;
    let feature = feature.get("feature").unwrap_or(feature);
    let names = feature.get("names")?.as_array()?;
    names.iter().map(|n| n.as_str().map(str::to_string)).collect()
}

pub(super) fn string_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    strings(batch.column_by_name(name).ok_or_else(|| anyhow!("missing column"))?.as_ref())
}

/// The values of a string column, plain or dictionary-encoded (as pyarrow writes categoricals).
fn strings(col: &dyn Array) -> Result<Vec<Option<String>>> {
    use arrow_array::cast::AsArray;
    if let Some(dict) = col.as_any_dictionary_opt() {
        let values = strings(dict.values().as_ref())?;
        let keys = dict.normalized_keys();
        return Ok((0..col.len()).map(|i| if col.is_null(i) { None } else { values[keys[i]].clone() }).collect());
    }
    let out = match col.data_type() {
        arrow_schema::DataType::Utf8 => col.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect(),
        arrow_schema::DataType::LargeUtf8 => col.as_string::<i64>().iter().map(|s| s.map(str::to_string)).collect(),
        arrow_schema::DataType::Utf8View => col.as_string_view().iter().map(|s| s.map(str::to_string)).collect(),
        other => bail!("expected a string column, found {other}"),
    };
    Ok(out)
}

fn label_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<RawLabel>>> {
    labels(batch.column_by_name(name).ok_or_else(|| anyhow!("missing column"))?.as_ref())
}

/// The labels of a column: integers, strings (plain or dictionary-encoded), or lists of them.
fn labels(col: &dyn Array) -> Result<Vec<Option<RawLabel>>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType as T;
    fn ints<P: ArrowPrimitiveType>(a: &dyn Array) -> Vec<Option<RawLabel>>
    where
        P::Native: Into<i64>,
    {
        a.as_primitive::<P>().iter().map(|v| v.map(|x| RawLabel::Int(x.into()))).collect()
    }
    let list = |values: &dyn Array, offsets: Vec<(usize, usize)>| -> Result<Vec<Option<RawLabel>>> {
        let items = labels(values)?;
        Ok(offsets
            .into_iter()
            .enumerate()
            .map(|(i, (a, b))| {
                (!col.is_null(i)).then(|| RawLabel::List(items[a..b].iter().flatten().cloned().collect()))
            })
            .collect())
    };
    Ok(match col.data_type() {
        T::Int8 => ints::<Int8Type>(col),
        T::Int16 => ints::<Int16Type>(col),
        T::Int32 => ints::<Int32Type>(col),
        T::Int64 => ints::<Int64Type>(col),
        T::UInt8 => ints::<UInt8Type>(col),
        T::UInt16 => ints::<UInt16Type>(col),
        T::UInt32 => ints::<UInt32Type>(col),
        T::Utf8 | T::LargeUtf8 | T::Utf8View | T::Dictionary(..) => {
            strings(col)?.into_iter().map(|s| s.map(RawLabel::Name)).collect()
        }
        T::List(_) => {
            let l = col.as_list::<i32>();
            let offsets = l.offsets().windows(2).map(|w| (w[0] as usize, w[1] as usize)).collect();
            list(l.values().as_ref(), offsets)?
        }
        T::LargeList(_) => {
            let l = col.as_list::<i64>();
            let offsets = l.offsets().windows(2).map(|w| (w[0] as usize, w[1] as usize)).collect();
            list(l.values().as_ref(), offsets)?
        }
        other => bail!("expected integer or string labels, or lists of them, found {other}"),
    })
}
