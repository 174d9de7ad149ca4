//! Datasets: a Hub dataset id (its parquet files through the HF cache) or local files
//! (parquet, CSV/TSV with a header, JSON lines, `text;label` lines), and their label map.
//!
//! Every row remembers where it came from (file and line or row number), so that every error
//! names it.

use crate::hub::Source;
use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{Array, RecordBatch};
use hf_hub::RepoType;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// One labelled text.
#[derive(Debug, Clone)]
pub struct Example {
    pub text: String,
    pub label: usize,
    /// 1-based line (text formats) or row (parquet) in `file`.
    pub line: usize,
}

/// The rows of one split.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    /// The file(s) it was read from, for messages.
    pub files: Vec<PathBuf>,
    pub examples: Vec<Example>,
    /// For each example, the index into `files` it came from.
    pub file_of: Vec<usize>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// `file:line` of example `i`.
    pub fn location(&self, i: usize) -> String {
        format!("{}:{}", self.files[self.file_of[i]].display(), self.examples[i].line)
    }

    /// The first `n` examples (for `--train-limit`/`--eval-limit`).
    pub fn truncate(&mut self, n: usize) {
        self.examples.truncate(n);
        self.file_of.truncate(n);
    }
}

/// A labelled dataset with its label names in id order.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// What the user named (a Hub id, a directory or a file).
    pub name: String,
    /// The Hub config name, when the data came from a Hub dataset card.
    pub config_name: Option<String>,
    pub labels: Vec<String>,
    pub splits: Vec<Split>,
}

impl Dataset {
    pub fn split(&self, name: &str) -> Option<&Split> {
        self.splits.iter().find(|s| s.name == name)
    }

    pub fn split_mut(&mut self, name: &str) -> Option<&mut Split> {
        self.splits.iter_mut().find(|s| s.name == name)
    }

    /// Examples per label id in one split.
    pub fn counts(&self, split: &Split) -> Vec<usize> {
        let mut c = vec![0; self.labels.len()];
        for e in &split.examples {
            c[e.label] += 1;
        }
        c
    }
}

/// What to read and how.
#[derive(Debug, Clone, Default)]
pub struct DataSpec {
    /// A Hub dataset id or a local directory (files named `train.*`, `validation.*`, `test.*`).
    pub dataset: Option<String>,
    /// Explicit files for each split; they override what `dataset` provides.
    pub train: Option<PathBuf>,
    pub validation: Option<PathBuf>,
    pub test: Option<PathBuf>,
    pub text_column: String,
    pub label_column: String,
    /// Label names in id order; integer labels index into them, string labels must be among them.
    pub label_names: Option<Vec<String>>,
}

/// The canonical split of a file or directory name (`train`, `validation`, `test`).
pub fn split_of_name(name: &str) -> Option<&'static str> {
    let stem = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    let head: String = stem.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    match head.as_str() {
        "train" | "training" => Some("train"),
        "validation" | "valid" | "val" | "dev" | "eval" => Some("validation"),
        "test" | "testing" => Some("test"),
        _ => None,
    }
}

const DATA_EXTENSIONS: &[&str] = &["parquet", "csv", "tsv", "jsonl", "json", "txt"];

fn is_data_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    DATA_EXTENSIONS.iter().any(|e| lower.ends_with(&format!(".{e}")))
}

/// A value read from the label column.
#[derive(Debug, Clone)]
enum RawLabel {
    Int(i64),
    Name(String),
}

#[derive(Debug)]
struct RawRow {
    text: String,
    label: RawLabel,
    line: usize,
}

/// Rows of one file, plus the label names its metadata declares (parquet ClassLabel).
struct RawFile {
    path: PathBuf,
    rows: Vec<RawRow>,
    class_names: Option<Vec<String>>,
}

/// Loads the dataset that `spec` describes: train is required; validation and test are
/// read when present.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    let mut files: BTreeMap<&'static str, Vec<PathBuf>> = BTreeMap::new();
    let mut card_names: Option<Vec<String>> = None;
    let mut config_name = None;
    let name = spec
        .dataset
        .clone()
        .or_else(|| spec.train.as_ref().map(|p| p.display().to_string()))
        .ok_or_else(|| anyhow!("no data: give --dataset (a Hub id or a directory) or --train FILE"))?;
    if let Some(ds) = &spec.dataset {
        let source = if Path::new(ds).is_file() {
            bail!("{ds} is a file: pass it as --train (and --validation/--test) instead of --dataset");
        } else {
            Source::parse(ds, RepoType::Dataset)?
        };
        let found = discover(&source, &spec.label_column)?;
        card_names = found.class_names;
        config_name = found.config_name;
        for (split, paths) in found.files {
            files.insert(split, paths);
        }
    }
    for (split, p) in [("train", &spec.train), ("validation", &spec.validation), ("test", &spec.test)] {
        if let Some(p) = p {
            files.insert(split, vec![p.clone()]);
        }
    }
    if !files.contains_key("train") {
        bail!("{name}: no training split found (expected a file named train.* or --train FILE)");
    }

    let mut raw: Vec<(&'static str, Vec<RawFile>)> = Vec::new();
    for split in ["train", "validation", "test"] {
        if let Some(paths) = files.get(split) {
            let read = paths
                .iter()
                .map(|p| read_file(p, &spec.text_column, &spec.label_column))
                .collect::<Result<Vec<_>>>()?;
            raw.push((split, read));
        }
    }

    let metadata_names = raw.iter().flat_map(|(_, fs)| fs.iter()).find_map(|f| f.class_names.clone());
    let labels = match (&spec.label_names, metadata_names.or(card_names)) {
        (Some(names), _) => names.clone(),
        (None, Some(names)) => names,
        (None, None) => infer_label_names(&raw[0].1)?,
    };
    if labels.is_empty() {
        bail!("{name}: no labels");
    }
    let mut seen = HashSet::new();
    for l in &labels {
        if !seen.insert(l) {
            bail!("label name {l:?} is given twice");
        }
    }
    let index: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();

    let mut splits = Vec::new();
    for (split, raw_files) in raw {
        let mut s = Split { name: split.to_string(), files: Vec::new(), examples: Vec::new(), file_of: Vec::new() };
        for (fi, f) in raw_files.into_iter().enumerate() {
            s.files.push(f.path.clone());
            for row in f.rows {
                let id = match &row.label {
                    RawLabel::Int(i) => {
                        if *i < 0 || *i as usize >= labels.len() {
                            bail!(
                                "{}:{}: label {i} is out of range (the {} labels are {})",
                                f.path.display(),
                                row.line,
                                labels.len(),
                                labels.join(", ")
                            );
                        }
                        *i as usize
                    }
                    RawLabel::Name(n) => *index.get(n.as_str()).ok_or_else(|| {
                        anyhow!(
                            "{}:{}: label {n:?} is not among the training labels ({})",
                            f.path.display(),
                            row.line,
                            labels.join(", ")
                        )
                    })?,
                };
                s.examples.push(Example { text: row.text, label: id, line: row.line });
                s.file_of.push(fi);
            }
        }
        if s.is_empty() {
            bail!("the {split} split ({}) has no rows", s.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
        }
        splits.push(s);
    }
    let ds = Dataset { name, config_name, labels, splits };
    check_labels_seen_in_train(&ds)?;
    Ok(ds)
}

use std::collections::HashSet;

/// A label that appears in validation or test but never in train cannot be learned.
fn check_labels_seen_in_train(ds: &Dataset) -> Result<()> {
    let train = ds.split("train").expect("train is required");
    let in_train: HashSet<usize> = train.examples.iter().map(|e| e.label).collect();
    for s in ds.splits.iter().filter(|s| s.name != "train") {
        for (i, e) in s.examples.iter().enumerate() {
            if !in_train.contains(&e.label) {
                bail!(
                    "{}: label {:?} occurs in the {} split but never in the training split",
                    s.location(i),
                    ds.labels[e.label],
                    s.name
                );
            }
        }
    }
    Ok(())
}

/// Label names when nothing declares them: sorted distinct names (as `datasets`'
/// `class_encode_column` does), or `0..=max` for integer labels.
fn infer_label_names(train: &[RawFile]) -> Result<Vec<String>> {
    let mut names = BTreeSet::new();
    let mut max_int: Option<i64> = None;
    for f in train {
        for r in &f.rows {
            match &r.label {
                RawLabel::Name(n) => {
                    names.insert(n.clone());
                }
                RawLabel::Int(i) => {
                    if *i < 0 {
                        bail!("{}:{}: negative label {i}", f.path.display(), r.line);
                    }
                    max_int = Some(max_int.map_or(*i, |m| m.max(*i)));
                }
            }
        }
    }
    match (names.is_empty(), max_int) {
        (false, None) => Ok(names.into_iter().collect()),
        (true, Some(m)) => Ok((0..=m).map(|i| i.to_string()).collect()),
        (true, None) => Ok(Vec::new()),
        (false, Some(_)) => bail!("the training data mixes integer and named labels; give --label-names"),
    }
}

struct Discovered {
    files: Vec<(&'static str, Vec<PathBuf>)>,
    class_names: Option<Vec<String>>,
    config_name: Option<String>,
}

/// Finds the split files of a Hub dataset or a directory: by the dataset card's `configs`
/// (the default config) when it has them, else by file names.
fn discover(source: &Source, label_column: &str) -> Result<Discovered> {
    let listing = source.list_files()?;
    let card = if listing.iter().any(|f| f == "README.md") {
        source.get_optional("README.md")?.map(|p| read_card(&p)).transpose()?.flatten()
    } else {
        None
    };
    let mut chosen: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut config_name = None;
    let mut class_names = None;
    if let Some(card) = &card {
        if let Some((cfg_name, data_files)) = card_config(card) {
            for (split, patterns) in data_files {
                let Some(canon) = split_of_name(&split) else { continue };
                let matched: Vec<String> =
                    listing.iter().filter(|f| patterns.iter().any(|p| glob_match(p, f))).cloned().collect();
                chosen.entry(canon).or_default().extend(matched);
            }
            class_names = card_class_names(card, cfg_name.as_deref(), label_column);
            config_name = cfg_name;
        }
    }
    if chosen.is_empty() {
        for f in listing.iter().filter(|f| is_data_file(f)) {
            if let Some(split) = split_of_name(f) {
                chosen.entry(split).or_default().push(f.clone());
            }
        }
    }
    if chosen.is_empty() {
        bail!(
            "{}: found no data files named train.*, validation.* or test.* ({})",
            source.describe(),
            DATA_EXTENSIONS.join(", ")
        );
    }
    let mut files = Vec::new();
    for (split, mut names) in chosen {
        names.sort();
        names.dedup();
        let paths = names.iter().map(|n| source.get(n)).collect::<Result<Vec<_>>>()?;
        files.push((split, paths));
    }
    Ok(Discovered { files, class_names, config_name })
}

/// The YAML front matter of a dataset card.
fn read_card(path: &Path) -> Result<Option<serde_yaml::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let Some(rest) = text.strip_prefix("---") else { return Ok(None) };
    let Some(end) = rest.find("\n---") else { return Ok(None) };
    let yaml: serde_yaml::Value = serde_yaml::from_str(&rest[..end])
        .with_context(|| format!("{}: invalid YAML front matter", path.display()))?;
    Ok(Some(yaml))
}

/// The default (or first) config of a card: its name and `(split, path patterns)`.
fn card_config(card: &serde_yaml::Value) -> Option<(Option<String>, Vec<(String, Vec<String>)>)> {
    let configs = card.get("configs")?.as_sequence()?;
    let cfg = configs
        .iter()
        .find(|c| c.get("default").and_then(serde_yaml::Value::as_bool) == Some(true))
        .or_else(|| configs.first())?;
    let name = cfg.get("config_name").and_then(serde_yaml::Value::as_str).map(str::to_string);
    let mut out = Vec::new();
    for df in cfg.get("data_files")?.as_sequence()? {
        let split = df.get("split").and_then(serde_yaml::Value::as_str)?.to_string();
        let patterns = match df.get("path")? {
            serde_yaml::Value::String(s) => vec![s.clone()],
            serde_yaml::Value::Sequence(v) => v.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => continue,
        };
        out.push((split, patterns));
    }
    Some((name, out))
}

/// ClassLabel names of `label_column` in the card's `dataset_info` for `config`.
fn card_class_names(card: &serde_yaml::Value, config: Option<&str>, label_column: &str) -> Option<Vec<String>> {
    let infos: Vec<&serde_yaml::Value> = match card.get("dataset_info")? {
        serde_yaml::Value::Sequence(v) => v.iter().collect(),
        other => vec![other],
    };
    let info = infos
        .iter()
        .find(|i| i.get("config_name").and_then(serde_yaml::Value::as_str) == config)
        .or_else(|| infos.first())?;
    let feature = info
        .get("features")?
        .as_sequence()?
        .iter()
        .find(|f| f.get("name").and_then(serde_yaml::Value::as_str) == Some(label_column))?;
    let names = feature.get("dtype")?.get("class_label")?.get("names")?;
    let map = names.as_mapping()?;
    let mut pairs: Vec<(usize, String)> = map
        .iter()
        .filter_map(|(k, v)| {
            let id = match k {
                serde_yaml::Value::String(s) => s.parse().ok()?,
                serde_yaml::Value::Number(n) => n.as_u64()? as usize,
                _ => return None,
            };
            Some((id, v.as_str()?.to_string()))
        })
        .collect();
    pairs.sort();
    Some(pairs.into_iter().map(|(_, n)| n).collect())
}

/// `*` matches any run of characters except `/`, `**` any run at all; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') => {
                let (deep, rest) = if p.get(1) == Some(&b'*') { (true, &p[2..]) } else { (false, &p[1..]) };
                for i in 0..=t.len() {
                    if go(rest, &t[i..]) {
                        return true;
                    }
                    if i < t.len() && !deep && t[i] == b'/' {
                        return false;
                    }
                }
                false
            }
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

fn read_file(path: &Path, text_col: &str, label_col: &str) -> Result<RawFile> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let (rows, class_names) = match ext.as_str() {
        "parquet" => read_parquet(path, text_col, label_col)?,
        "csv" => (read_delimited(path, b',', text_col, label_col)?, None),
        "tsv" => (read_delimited(path, b'\t', text_col, label_col)?, None),
        "jsonl" | "json" => (read_jsonl(path, text_col, label_col)?, None),
        _ => (read_semicolon(path)?, None),
    };
    Ok(RawFile { path: path.to_path_buf(), rows, class_names })
}

fn check_text(path: &Path, line: usize, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        bail!("{}:{line}: empty text", path.display());
    }
    Ok(())
}

fn parse_label(path: &Path, line: usize, s: &str) -> Result<RawLabel> {
    let s = s.trim();
    if s.is_empty() {
        bail!("{}:{line}: empty label", path.display());
    }
    Ok(match s.parse::<i64>() {
        Ok(i) => RawLabel::Int(i),
        Err(_) => RawLabel::Name(s.to_string()),
    })
}

/// Lines of a text file, each checked to be UTF-8 (1-based numbers; the line ending removed).
fn utf8_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw)
            .map_err(|e| anyhow!("{}:{}: invalid UTF-8 ({e})", path.display(), i + 1))?;
        out.push((i + 1, line.to_string()));
    }
    if out.last().is_some_and(|(_, l)| l.is_empty()) {
        out.pop();
    }
    Ok(out)
}

/// `text;label` lines (the label after the last `;`). Blank lines are skipped.
fn read_semicolon(path: &Path) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (n, line) in utf8_lines(path)? {
        if line.trim().is_empty() {
            continue;
        }
        let (text, label) = line.rsplit_once(';').ok_or_else(|| {
            anyhow!("{}:{n}: malformed row (expected `text;label`): {:?}", path.display(), truncate_for_message(&line))
        })?;
        check_text(path, n, text)?;
        rows.push(RawRow { text: text.to_string(), label: parse_label(path, n, label)?, line: n });
    }
    Ok(rows)
}

fn truncate_for_message(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

fn read_jsonl(path: &Path, text_col: &str, label_col: &str) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (n, line) in utf8_lines(path)? {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| anyhow!("{}:{n}: malformed JSON: {e}", path.display()))?;
        let obj = v.as_object().ok_or_else(|| anyhow!("{}:{n}: expected a JSON object", path.display()))?;
        let text = obj
            .get(text_col)
            .ok_or_else(|| anyhow!("{}:{n}: missing field {text_col:?}", path.display()))?
            .as_str()
            .ok_or_else(|| anyhow!("{}:{n}: field {text_col:?} is not a string", path.display()))?;
        check_text(path, n, text)?;
        let label = match obj.get(label_col) {
            None => bail!("{}:{n}: missing field {label_col:?}", path.display()),
            Some(Value::Number(x)) => RawLabel::Int(
                x.as_i64().ok_or_else(|| anyhow!("{}:{n}: label {x} is not an integer", path.display()))?,
            ),
            Some(Value::String(s)) => parse_label(path, n, s)?,
            Some(other) => bail!("{}:{n}: label {other} is neither a string nor an integer", path.display()),
        };
        rows.push(RawRow { text: text.to_string(), label, line: n });
    }
    Ok(rows)
}

fn read_delimited(path: &Path, delim: u8, text_col: &str, label_col: &str) -> Result<Vec<RawRow>> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(true)
        .flexible(false)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let header_err = |e: csv::Error| anyhow!("{}:1: cannot read the header: {e}", path.display());
    let headers = rdr.byte_headers().map_err(header_err)?.clone();
    let col = |name: &str| -> Result<usize> {
        headers.iter().position(|h| h == name.as_bytes()).ok_or_else(|| {
            let have: Vec<String> = headers.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
            anyhow!("{}: no column {name:?} (columns: {})", path.display(), have.join(", "))
        })
    };
    let (ti, li) = (col(text_col)?, col(label_col)?);
    let mut rows = Vec::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        let more = rdr.read_byte_record(&mut rec).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow!("{}:{line}: malformed row: {e}", path.display())
        })?;
        if !more {
            break;
        }
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let field = |i: usize| -> Result<&str> {
            std::str::from_utf8(&rec[i]).map_err(|e| anyhow!("{}:{line}: invalid UTF-8 ({e})", path.display()))
        };
        let text = field(ti)?;
        check_text(path, line, text)?;
        rows.push(RawRow { text: text.to_string(), label: parse_label(path, line, field(li)?)?, line });
    }
    Ok(rows)
}

fn read_parquet(path: &Path, text_col: &str, label_col: &str) -> Result<(Vec<RawRow>, Option<Vec<String>>)> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow!("{}: not a valid parquet file: {e}", path.display()))?;
    let class_names = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "huggingface").and_then(|k| k.value.clone()))
        .and_then(|json| parquet_class_names(&json, label_col));
    let schema = builder.schema().clone();
    for c in [text_col, label_col] {
        if schema.field_with_name(c).is_err() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            bail!("{}: no column {c:?} (columns: {})", path.display(), have.join(", "));
        }
    }
    let reader = builder.build().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| anyhow!("{}: reading parquet: {e}", path.display()))?;
        let base = rows.len();
        let texts = string_column(&batch, text_col).with_context(|| format!("{}: column {text_col:?}", path.display()))?;
        let labels = label_column(&batch, label_col).with_context(|| format!("{}: column {label_col:?}", path.display()))?;
        for (i, (t, l)) in texts.into_iter().zip(labels).enumerate() {
            let row = base + i + 1;
            let t = t.ok_or_else(|| anyhow!("{}: row {row}: null text", path.display()))?;
            check_text(path, row, &t)?;
            let l = l.ok_or_else(|| anyhow!("{}: row {row}: null label", path.display()))?;
            rows.push(RawRow { text: t, label: l, line: row });
        }
    }
    Ok((rows, class_names))
}

fn parquet_class_names(json: &str, label_col: &str) -> Option<Vec<String>> {
    let v: Value = serde_json::from_str(json).ok()?;
    let names = v.get("info")?.get("features")?.get(label_col)?.get("names")?.as_array()?;
    names.iter().map(|n| n.as_str().map(str::to_string)).collect()
}

fn string_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    use arrow_array::cast::AsArray;
    let col = batch.column_by_name(name).ok_or_else(|| anyhow!("missing column"))?;
    let out = match col.data_type() {
        arrow_schema::DataType::Utf8 => col.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect(),
        arrow_schema::DataType::LargeUtf8 => col.as_string::<i64>().iter().map(|s| s.map(str::to_string)).collect(),
        arrow_schema::DataType::Utf8View => col.as_string_view().iter().map(|s| s.map(str::to_string)).collect(),
        other => bail!("expected a string column, found {other}"),
    };
    Ok(out)
}

fn label_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<RawLabel>>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType as T;
    let col = batch.column_by_name(name).ok_or_else(|| anyhow!("missing column"))?;
    fn ints<P: arrow_array::ArrowPrimitiveType>(a: &dyn Array) -> Vec<Option<RawLabel>>
    where
        P::Native: Into<i64>,
    {
        a.as_primitive::<P>().iter().map(|v| v.map(|x| RawLabel::Int(x.into()))).collect()
    }
    Ok(match col.data_type() {
        T::Int8 => ints::<Int8Type>(col),
        T::Int16 => ints::<Int16Type>(col),
        T::Int32 => ints::<Int32Type>(col),
        T::Int64 => ints::<Int64Type>(col),
        T::UInt8 => ints::<UInt8Type>(col),
        T::UInt16 => ints::<UInt16Type>(col),
        T::UInt32 => ints::<UInt32Type>(col),
        T::Utf8 | T::LargeUtf8 | T::Utf8View => {
            string_column(batch, name)?.into_iter().map(|s| s.map(RawLabel::Name)).collect()
        }
        other => bail!("expected integer or string labels, found {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("split/train-*", "split/train-00000-of-00001.parquet"));
        assert!(!glob_match("split/train-*", "unsplit/train-00000-of-00001.parquet"));
        assert!(!glob_match("data/*", "data/a/b.parquet"));
        assert!(glob_match("data/**", "data/a/b.parquet"));
    }

    #[test]
    fn split_names() {
        assert_eq!(split_of_name("split/train-00000-of-00001.parquet"), Some("train"));
        assert_eq!(split_of_name("validation.txt"), Some("validation"));
        assert_eq!(split_of_name("dev.csv"), Some("validation"));
        assert_eq!(split_of_name("test.jsonl"), Some("test"));
        assert_eq!(split_of_name("README.md"), None);
    }
}
