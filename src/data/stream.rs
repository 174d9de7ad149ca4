//! Texts to classify read a chunk at a time (`predict --output`): memory is bounded by the
//! chunk whatever the file's size. The formats of [`super::readers`] for texts: plain lines,
//! JSON lines, CSV/TSV with a header, parquet. A row that cannot be classified (malformed, not
//! UTF-8, a null or empty text) stops the reading with its file and line, or, when skipping,
//! is counted and left out.

use super::problems::{RowProblem, Sink};
use super::readers::{self, Columns};
use super::InputText;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// How many skipped rows are named one by one; the rest are counted.
const NAMED: usize = 10;

enum Source {
    /// Plain lines (`.txt`) or JSON lines (`.jsonl`, `.json`), with the last line's number.
    Lines {
        reader: BufReader<File>,
        json: bool,
        line: usize,
    },
    Csv {
        reader: csv::Reader<File>,
        text: usize,
    },
    Parquet {
        reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
        row: usize,
    },
}

/// A file of texts, read a chunk at a time.
pub struct TextStream {
    path: PathBuf,
    text_column: String,
    source: Source,
    sink: Sink,
    /// Rows left out (with `skip_bad`): how many, and the first [`NAMED`].
    pub skipped: usize,
    pub first_skipped: Vec<RowProblem>,
    /// Rows read so far, classifiable or not.
    pub rows_read: usize,
    /// The rows of the file: exact for parquet, its lines for the text formats (a CSV text
    /// with line breaks makes that more than its records), for progress.
    pub rows_expected: u64,
}

impl TextStream {
    /// Opens `path` by its extension; `skip_bad` leaves out the rows that cannot be classified
    /// instead of stopping at the first.
    pub fn open(path: &Path, text_column: &str, skip_bad: bool) -> Result<TextStream> {
        crate::fsx::check_regular_file(path)?;
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let file = || File::open(path).with_context(|| format!("opening {}", path.display()));
        let (source, rows_expected) = match ext.as_str() {
            "txt" | "" => (Source::Lines { reader: BufReader::new(file()?), json: false, line: 0 }, count_lines(path)?),
            "jsonl" | "json" => {
                (Source::Lines { reader: BufReader::new(file()?), json: true, line: 0 }, count_lines(path)?)
            }
            "csv" | "tsv" => {
                let source = open_csv(path, if ext == "csv" { b',' } else { b'\t' }, text_column)?;
                (source, count_lines(path)?.saturating_sub(1))
            }
            "parquet" => open_parquet(path, text_column, file()?)?,
            other => bail!(
                "{}: unsupported file type .{} (supported: .{})",
                path.display(),
                crate::display::clip(other, 20),
                readers::EXTENSIONS.join(", .")
            ),
        };
        Ok(TextStream {
            path: path.to_path_buf(),
            text_column: text_column.to_string(),
            source,
            sink: Sink { strict: !skip_bad, problems: Vec::new() },
            skipped: 0,
            first_skipped: Vec::new(),
            rows_read: 0,
            rows_expected,
        })
    }

    /// Up to `n` classifiable texts; `None` at the end of the file.
    pub fn next_chunk(&mut self, n: usize) -> Result<Option<Vec<InputText>>> {
        let mut out = Vec::with_capacity(n.min(1 << 16));
        let mut more = true;
        while out.len() < n && more {
            let want = n - out.len();
            more = self.read_some(&mut out, want)?;
        }
        for p in self.sink.problems.drain(..) {
            self.skipped += 1;
            if self.first_skipped.len() < NAMED {
                self.first_skipped.push(p);
            }
        }
        Ok((!out.is_empty() || more).then_some(out))
    }

    /// Reads rows into `out` (at most `n`; a parquet batch at a time); false at the end.
    fn read_some(&mut self, out: &mut Vec<InputText>, n: usize) -> Result<bool> {
        let mut acc = Rows { out, sink: &mut self.sink, path: &self.path, read: &mut self.rows_read };
        match &mut self.source {
            Source::Lines { reader, json, line } => {
                let column = json.then_some(self.text_column.as_str());
                read_lines(reader, column, line, &mut acc, n)
            }
            Source::Csv { reader, text } => read_csv(reader, *text, &mut acc, n),
            Source::Parquet { reader, row } => {
                let Some(batch) = reader.next() else { return Ok(false) };
                let batch = batch.map_err(|e| anyhow!("{}: reading parquet: {e}", acc.path.display()))?;
                let texts = readers::string_column(&batch, &self.text_column)
                    .with_context(|| format!("{}: column {:?}", acc.path.display(), self.text_column))?;
                for t in texts {
                    *row += 1;
                    acc.text(*row, t)?;
                }
                Ok(true)
            }
        }
    }
}

/// Where the rows of one read go.
struct Rows<'a> {
    out: &'a mut Vec<InputText>,
    sink: &'a mut Sink,
    path: &'a Path,
    read: &'a mut usize,
}

impl Rows<'_> {
    fn text(&mut self, line: usize, text: Option<String>) -> Result<()> {
        match text {
            Some(t) if !t.trim().is_empty() => {
                *self.read += 1;
                self.out.push(InputText { line, text: t });
                Ok(())
            }
            Some(_) => self.bad(line, "empty text".into()),
            None => self.bad(line, "null text".into()),
        }
    }

    fn bad(&mut self, line: usize, message: String) -> Result<()> {
        *self.read += 1;
        self.sink.row(self.path, line, message)
    }
}

/// Up to `n` lines: plain texts, or JSON objects whose field `json` holds the text.
fn read_lines(
    reader: &mut BufReader<File>,
    json: Option<&str>,
    line: &mut usize,
    acc: &mut Rows,
    n: usize,
) -> Result<bool> {
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).with_context(|| format!("reading {}", acc.path.display()))? == 0 {
            return Ok(false);
        }
        *line += 1;
        let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
        match (readers::line_text(raw, *line == 1), json) {
            (Err(e), _) => acc.bad(*line, format!("invalid UTF-8 ({e})"))?,
            (Ok(s), None) => acc.text(*line, Some(s.to_string()))?,
            (Ok(s), Some(column)) => match readers::json_text(s, column) {
                Ok(t) => acc.text(*line, Some(t))?,
                Err(msg) => acc.bad(*line, msg)?,
            },
        }
    }
    Ok(true)
}

/// Up to `n` CSV/TSV records, the text in column `text`.
fn read_csv(reader: &mut csv::Reader<File>, text: usize, acc: &mut Rows, n: usize) -> Result<bool> {
    let mut rec = csv::ByteRecord::new();
    for _ in 0..n {
        match reader.read_byte_record(&mut rec) {
            Ok(false) => return Ok(false),
            Ok(true) => {
                let line = rec.position().map_or(0, |p| p.line() as usize);
                match rec.get(text).map(std::str::from_utf8) {
                    Some(Ok(t)) => acc.text(line, Some(t.to_string()))?,
                    Some(Err(e)) => acc.bad(line, format!("invalid UTF-8 ({e})"))?,
                    None => acc.text(line, None)?,
                }
            }
            Err(e) => {
                acc.bad(e.position().map_or(0, |p| p.line() as usize), format!("malformed row: {e}"))?;
                // after a broken quote the reader cannot find the next record
                if !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }) {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// The lines of `path` (a last one without a line break counts), read a megabyte at a time.
fn count_lines(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut buf, mut lines, mut last) = (vec![0u8; 1 << 20], 0u64, b'\n');
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(lines + u64::from(last != b'\n'));
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
}

fn open_csv(path: &Path, delim: u8, text_column: &str) -> Result<Source> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delim)
        .flexible(false)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let header_err = |e: csv::Error| anyhow!("{}:1: cannot read the header: {e}", path.display());
    let headers = reader.byte_headers().map_err(header_err)?.clone();
    let (text, _) = readers::header_columns(path, &headers, Columns::text(text_column))?;
    Ok(Source::Csv { reader, text })
}

/// Parquet read in batches of 1024 rows (the chunk's size bounds memory, not the file's).
fn open_parquet(path: &Path, text_column: &str, file: File) -> Result<(Source, u64)> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("{}: not a valid parquet file: {e}", path.display()))?;
    let schema = builder.schema().clone();
    let Some(index) = schema.fields().iter().position(|f| f.name() == text_column) else {
        let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        bail!("{}: no column {text_column:?} (columns: {})", path.display(), have.join(", "));
    };
    // only the text column is decoded
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let reader = builder.with_projection(mask).with_batch_size(1024).build();
    let reader = reader.map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((Source::Parquet { reader, row: 0 }, rows))
}
