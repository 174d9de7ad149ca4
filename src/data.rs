//! Datasets: a Hub dataset id (its parquet files through the HF cache) or local files
//! (parquet, CSV/TSV with a header, JSON lines, `text;label` lines), and their label map.
//!
//! Every row remembers where it came from (file and line or row number), so that every error
//! names it.

use crate::hub::Source;
use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{Array, RecordBatch};
use clap::builder::ArgPredicate;
use hf_hub::RepoType;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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

    /// The texts, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.text.as_str()).collect()
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

/// A row that could not be used, found while reading leniently (`check-data`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowProblem {
    pub file: PathBuf,
    /// 1-based line (text formats) or row (parquet); 0 when it concerns the whole file.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Where row problems go: strict reading stops at the first; lenient reading records them
/// and skips the row.
struct Sink {
    strict: bool,
    problems: Vec<RowProblem>,
}

impl Sink {
    fn row(&mut self, file: &Path, line: usize, message: String) -> Result<()> {
        let p = RowProblem { file: file.to_path_buf(), line, message };
        if self.strict {
            bail!("{p}");
        }
        self.problems.push(p);
        Ok(())
    }
}

/// The dataset the commands read unless told otherwise.
pub const DEFAULT_DATASET: &str = "dair-ai/emotion";

/// What to read and how (the data flags of `train`, `eval` and `check-data`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataSpec {
    /// A Hub dataset id or a directory with train.*/validation.*/test.* files (no default when
    /// --train is given).
    #[arg(long, default_value = DEFAULT_DATASET, default_value_if("train", ArgPredicate::IsPresent, None))]
    pub dataset: Option<String>,
    /// Training file (parquet, csv, tsv, jsonl, or `text;label` lines); overrides the dataset's.
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Validation file.
    #[arg(long)]
    pub validation: Option<PathBuf>,
    /// Test file.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Column (or JSON field) holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Column (or JSON field) holding the label (a name or an integer id).
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Label names in id order, comma-separated (default: the dataset's ClassLabel names, else
    /// the sorted distinct names). Integer labels index into them; named labels must be among them.
    #[arg(long, value_delimiter = ',')]
    pub label_names: Option<Vec<String>>,
}

/// A dataset split, by its canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitName {
    Train,
    Validation,
    Test,
}

impl SplitName {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Validation => "validation",
            SplitName::Test => "test",
        }
    }
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

/// Loads the dataset that `spec` describes: whichever of train, validation and test it has. The first bad row is an error naming its file and line.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    let mut sink = Sink { strict: true, problems: Vec::new() };
    load_with(spec, &mut sink)
}

/// Like [`load`], but bad rows (malformed, invalid UTF-8, empty text or label, unknown label)
/// are skipped and returned instead of stopping the load.
pub fn load_lenient(spec: &DataSpec) -> Result<(Dataset, Vec<RowProblem>)> {
    let mut sink = Sink { strict: false, problems: Vec::new() };
    let ds = load_with(spec, &mut sink)?;
    Ok((ds, sink.problems))
}

fn load_with(spec: &DataSpec, sink: &mut Sink) -> Result<Dataset> {
    let mut files: BTreeMap<&'static str, Vec<PathBuf>> = BTreeMap::new();
    let mut card_names: Option<Vec<String>> = None;
    let mut config_name = None;
    let name = spec
        .dataset
        .clone()
        .or_else(|| {
            [&spec.train, &spec.validation, &spec.test].into_iter().flatten().next().map(|p| p.display().to_string())
        })
        .ok_or_else(|| anyhow!("no data: give --dataset (a Hub id or a directory) or data files"))?;
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
    if files.is_empty() {
        bail!("{name}: no data files found");
    }

    let mut raw: Vec<(&'static str, Vec<RawFile>)> = Vec::new();
    for split in ["train", "validation", "test"] {
        if let Some(paths) = files.get(split) {
            let read = paths
                .iter()
                .map(|p| read_file(p, &spec.text_column, &spec.label_column, sink))
                .collect::<Result<Vec<_>>>()?;
            raw.push((split, read));
        }
    }

    let metadata_names = raw.iter().flat_map(|(_, fs)| fs.iter()).find_map(|f| f.class_names.clone());
    let labels = match (&spec.label_names, metadata_names.or(card_names)) {
        (Some(names), _) => names.clone(),
        (None, Some(names)) => names,
        // Named from the training split (or the first split read when there is none).
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
                    RawLabel::Int(i) if *i >= 0 && (*i as usize) < labels.len() => *i as usize,
                    RawLabel::Int(i) => {
                        let msg = format!(
                            "label {i} is out of range (the {} labels are {})",
                            labels.len(),
                            labels.join(", ")
                        );
                        sink.row(&f.path, row.line, msg)?;
                        continue;
                    }
                    RawLabel::Name(n) => match index.get(n.as_str()) {
                        Some(&id) => id,
                        None => {
                            let msg = format!("label {n:?} is not among the training labels ({})", labels.join(", "));
                            sink.row(&f.path, row.line, msg)?;
                            continue;
                        }
                    },
                };
                s.examples.push(Example { text: row.text, label: id, line: row.line });
                s.file_of.push(fi);
            }
        }
        if s.is_empty() {
            bail!(
                "the {split} split ({}) has no rows",
                s.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        splits.push(s);
    }
    let ds = Dataset { name, config_name, labels, splits };
    check_labels_seen_in_train(&ds, sink)?;
    Ok(ds)
}

/// A label that appears in validation or test but never in train cannot be learned.
fn check_labels_seen_in_train(ds: &Dataset, sink: &mut Sink) -> Result<()> {
    let Some(train) = ds.split("train") else { return Ok(()) };
    let in_train: HashSet<usize> = train.examples.iter().map(|e| e.label).collect();
    for s in ds.splits.iter().filter(|s| s.name != "train") {
        for (i, e) in s.examples.iter().enumerate() {
            if !in_train.contains(&e.label) {
                let msg = format!(
                    "label {:?} occurs in the {} split but never in the training split",
                    ds.labels[e.label], s.name
                );
                sink.row(&s.files[s.file_of[i]], e.line, msg)?;
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
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&rest[..end]).with_context(|| format!("{}: invalid YAML front matter", path.display()))?;
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

fn read_file(path: &Path, text_col: &str, label_col: &str, sink: &mut Sink) -> Result<RawFile> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let (rows, class_names) = match ext.as_str() {
        "parquet" => read_parquet(path, text_col, label_col, sink)?,
        "csv" => (read_delimited(path, b',', text_col, label_col, sink)?, None),
        "tsv" => (read_delimited(path, b'\t', text_col, label_col, sink)?, None),
        "jsonl" | "json" => (read_jsonl(path, text_col, label_col, sink)?, None),
        _ => (read_semicolon(path, sink)?, None),
    };
    Ok(RawFile { path: path.to_path_buf(), rows, class_names })
}

/// Builds a row from its text and label, or reports why it cannot be one.
fn make_row(sink: &mut Sink, path: &Path, line: usize, text: &str, label: Option<RawLabel>) -> Result<Option<RawRow>> {
    if text.trim().is_empty() {
        let what = if text.is_empty() { "empty text" } else { "whitespace-only text" };
        sink.row(path, line, what.to_string())?;
        return Ok(None);
    }
    let Some(label) = label else {
        sink.row(path, line, "empty label".to_string())?;
        return Ok(None);
    };
    Ok(Some(RawRow { text: text.to_string(), label, line }))
}

/// A label written as text: an integer id or a name; `None` when empty.
fn parse_label(s: &str) -> Option<RawLabel> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    Some(match s.parse::<i64>() {
        Ok(i) => RawLabel::Int(i),
        Err(_) => RawLabel::Name(s.to_string()),
    })
}

/// Lines of a text file, each checked to be UTF-8 (1-based numbers; the line ending removed).
/// Lines that are not UTF-8 go to `sink` and are left out.
fn utf8_lines(path: &Path, sink: &mut Sink) -> Result<Vec<(usize, String)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Ok(line) => out.push((i + 1, line.to_string())),
            Err(e) => sink.row(path, i + 1, format!("invalid UTF-8 ({e})"))?,
        }
    }
    if out.last().is_some_and(|(_, l)| l.is_empty()) {
        out.pop();
    }
    Ok(out)
}

/// `text;label` lines (the label after the last `;`). Blank lines are skipped.
fn read_semicolon(path: &Path, sink: &mut Sink) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (n, line) in utf8_lines(path, sink)? {
        if line.is_empty() {
            continue;
        }
        let Some((text, label)) = line.rsplit_once(';') else {
            let msg = format!("malformed row (expected `text;label`): {:?}", truncate_for_message(&line));
            sink.row(path, n, msg)?;
            continue;
        };
        rows.extend(make_row(sink, path, n, text, parse_label(label))?);
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

fn read_jsonl(path: &Path, text_col: &str, label_col: &str, sink: &mut Sink) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (n, line) in utf8_lines(path, sink)? {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = (|| -> std::result::Result<(String, Option<RawLabel>), String> {
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("malformed JSON: {e}"))?;
            let obj = v.as_object().ok_or("expected a JSON object")?;
            let text = obj
                .get(text_col)
                .ok_or_else(|| format!("missing field {text_col:?}"))?
                .as_str()
                .ok_or_else(|| format!("field {text_col:?} is not a string"))?;
            let label = match obj.get(label_col) {
                None => return Err(format!("missing field {label_col:?}")),
                Some(Value::Number(x)) => {
                    Some(RawLabel::Int(x.as_i64().ok_or(format!("label {x} is not an integer"))?))
                }
                Some(Value::String(s)) => parse_label(s),
                Some(other) => return Err(format!("label {other} is neither a string nor an integer")),
            };
            Ok((text.to_string(), label))
        })();
        match parsed {
            Ok((text, label)) => rows.extend(make_row(sink, path, n, &text, label)?),
            Err(msg) => sink.row(path, n, msg)?,
        }
    }
    Ok(rows)
}

fn read_delimited(path: &Path, delim: u8, text_col: &str, label_col: &str, sink: &mut Sink) -> Result<Vec<RawRow>> {
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
        match (std::str::from_utf8(&rec[ti]), std::str::from_utf8(&rec[li])) {
            (Ok(text), Ok(label)) => rows.extend(make_row(sink, path, line, text, parse_label(label))?),
            (Err(e), _) | (_, Err(e)) => sink.row(path, line, format!("invalid UTF-8 ({e})"))?,
        }
    }
    Ok(rows)
}

fn read_parquet(
    path: &Path,
    text_col: &str,
    label_col: &str,
    sink: &mut Sink,
) -> Result<(Vec<RawRow>, Option<Vec<String>>)> {
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
    let mut base = 0;
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| anyhow!("{}: reading parquet: {e}", path.display()))?;
        let texts =
            string_column(&batch, text_col).with_context(|| format!("{}: column {text_col:?}", path.display()))?;
        let labels =
            label_column(&batch, label_col).with_context(|| format!("{}: column {label_col:?}", path.display()))?;
        let n = texts.len();
        for (i, (t, l)) in texts.into_iter().zip(labels).enumerate() {
            let row = base + i + 1;
            match t {
                Some(t) => rows.extend(make_row(sink, path, row, &t, l)?),
                None => sink.row(path, row, "null text".to_string())?,
            }
        }
        base += n;
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

/// One text to classify, with the line (or row) it came from.
#[derive(Debug, Clone)]
pub struct InputText {
    pub line: usize,
    pub text: String,
}

/// Texts to classify from a file: one per line (`.txt` and other extensions), a field of JSON
/// lines (`.jsonl`), or a column of a CSV/TSV file with a header. Empty texts are kept (the
/// caller reports them); malformed rows and invalid UTF-8 are errors naming the line.
pub fn read_texts(path: &Path, text_col: &str) -> Result<Vec<InputText>> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut sink = Sink { strict: true, problems: Vec::new() };
    match ext.as_str() {
        "jsonl" | "json" => {
            let mut out = Vec::new();
            for (n, line) in utf8_lines(path, &mut sink)? {
                if line.trim().is_empty() {
                    out.push(InputText { line: n, text: String::new() });
                    continue;
                }
                let v: Value =
                    serde_json::from_str(&line).map_err(|e| anyhow!("{}:{n}: malformed JSON: {e}", path.display()))?;
                let text = v
                    .get(text_col)
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("{}:{n}: no string field {text_col:?}", path.display()))?;
                out.push(InputText { line: n, text: text.to_string() });
            }
            Ok(out)
        }
        "csv" | "tsv" => {
            let delim = if ext == "csv" { b',' } else { b'\t' };
            let mut rdr = csv::ReaderBuilder::new()
                .delimiter(delim)
                .from_path(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let headers =
                rdr.byte_headers().map_err(|e| anyhow!("{}:1: cannot read the header: {e}", path.display()))?;
            let ti = headers.iter().position(|h| h == text_col.as_bytes()).ok_or_else(|| {
                let have: Vec<String> = headers.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
                anyhow!("{}: no column {text_col:?} (columns: {})", path.display(), have.join(", "))
            })?;
            let mut out = Vec::new();
            for rec in rdr.byte_records() {
                let rec = rec.map_err(|e| {
                    anyhow!("{}:{}: malformed row: {e}", path.display(), e.position().map_or(0, |p| p.line()))
                })?;
                let n = rec.position().map_or(0, |p| p.line() as usize);
                let text = std::str::from_utf8(&rec[ti])
                    .map_err(|e| anyhow!("{}:{n}: invalid UTF-8 ({e})", path.display()))?;
                out.push(InputText { line: n, text: text.to_string() });
            }
            Ok(out)
        }
        _ => Ok(utf8_lines(path, &mut sink)?.into_iter().map(|(line, text)| InputText { line, text }).collect()),
    }
}

/// Lines of standard input (invalid UTF-8 is an error naming the line).
pub fn read_stdin_texts() -> Result<Vec<InputText>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| anyhow!("<stdin>:{}: invalid UTF-8 ({e})", i + 1))?;
        out.push(InputText { line: i + 1, text: text.to_string() });
    }
    if out.last().is_some_and(|t| t.text.is_empty()) {
        out.pop();
    }
    Ok(out)
}
