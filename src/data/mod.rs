//! Datasets: a Hub dataset id (its parquet files through the HF cache) or local files
//! (parquet, CSV/TSV with a header, JSON lines, `text;label` lines), and their label map.
//! [`discover`] finds the files, [`readers`] reads the formats; this module assembles the
//! splits and maps their labels to ids.
//!
//! Every row remembers where it came from (file and line or row number), so that every error
//! names it.

mod discover;
pub mod exclude;
mod problems;
mod readers;
pub mod stream;

pub use discover::{glob_match, split_of_name};

use crate::display::{label, labels as show_labels};
use crate::hub::Source;
use crate::hub::{with_revision, RepoKind};
use anyhow::{anyhow, bail, Context, Result};
use clap::builder::ArgPredicate;
pub use problems::RowProblem;
use problems::Sink;
use readers::{Columns, RawFile, RawLabel, RawRow};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One labelled text.
#[derive(Debug, Clone)]
pub struct Example {
    pub text: String,
    /// Label ids: exactly one in single-label data, one or more (distinct) in multi-label data.
    pub labels: Vec<usize>,
    /// 1-based line (text formats) or row (parquet) in `file`.
    pub line: usize,
}

impl Example {
    /// The label of single-label data (the first label otherwise).
    pub fn label(&self) -> usize {
        self.labels[0]
    }
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
    /// How many examples the split had before [`Split::truncate`] cut it (None: whole).
    pub sliced_from: Option<usize>,
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
        if n < self.examples.len() {
            self.sliced_from = Some(self.sliced_from.unwrap_or(self.examples.len()));
        }
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
    /// Whether a text may carry several labels (the label column holds lists).
    pub multi_label: bool,
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
        for &l in split.examples.iter().flat_map(|e| &e.labels) {
            c[l] += 1;
        }
        c
    }
}

/// The dataset the commands read unless told otherwise.
pub const DEFAULT_DATASET: &str = "dair-ai/emotion";

/// What to read and how (the data flags of `train`, `eval` and `check-data`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct DataSpec {
    /// A Hub dataset id or a directory with train.*/validation.*/test.* files (no default when
    /// --train is given).
    #[arg(long, default_value = DEFAULT_DATASET, default_value_if("train", ArgPredicate::IsPresent, None), help_heading = "Data", value_name = "DATASET")]
    pub dataset: Option<String>,
    /// The dataset's branch, tag or commit on the Hub (default: main); also `--dataset ID@REV`.
    #[arg(long, value_name = "REV", requires = "dataset", help_heading = "Data")]
    pub dataset_revision: Option<String>,
    /// Training file (parquet, csv, tsv, jsonl, or `text;label` lines); overrides the dataset's.
    #[arg(long, help_heading = "Data", value_name = "FILE")]
    pub train: Option<PathBuf>,
    /// Validation file.
    #[arg(long, help_heading = "Data", value_name = "FILE")]
    pub validation: Option<PathBuf>,
    /// Test file.
    #[arg(long, help_heading = "Data", value_name = "FILE")]
    pub test: Option<PathBuf>,
    /// Column (or JSON field) holding the text.
    #[arg(long, default_value = "text", help_heading = "Data", value_name = "COLUMN")]
    pub text_column: String,
    /// Column (or JSON field) holding the label (a name or an integer id).
    #[arg(long, default_value = "label", help_heading = "Data", value_name = "COLUMN")]
    pub label_column: String,
    /// Label names in id order, comma-separated (default: the dataset's ClassLabel names, else
    /// the sorted distinct names). Integer labels index into them; named labels must be among them.
    #[arg(long, value_delimiter = ',', help_heading = "Data", value_name = "NAMES")]
    pub label_names: Option<Vec<String>>,
    /// Splits a label cell into several labels (multi-label CSV/TSV/`text;label` data), e.g. ','.
    #[arg(long, help_heading = "Data", value_name = "SEP")]
    pub label_separator: Option<String>,
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

/// Loads the dataset that `spec` describes: whichever of train, validation and test it has.
/// The first bad row is an error naming its file and line.
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

/// The files of each split, and what the dataset card says.
struct Found {
    name: String,
    files: BTreeMap<&'static str, Vec<PathBuf>>,
    card_names: Option<Vec<String>>,
    config_name: Option<String>,
    /// The label names came from a `labels.txt` beside headerless CSV/TSV files.
    headerless: bool,
}

/// The split files of `spec`: the dataset's, with explicit `--train/--validation/--test` files
/// taking the place of its own.
fn find_files(spec: &DataSpec) -> Result<Found> {
    let explicit = [("train", &spec.train), ("validation", &spec.validation), ("test", &spec.test)];
    let name = spec
        .dataset
        .clone()
        .or_else(|| explicit.iter().find_map(|(_, p)| p.as_ref()).map(|p| p.display().to_string()))
        .ok_or_else(|| anyhow!("no data: give --dataset (a Hub id or a directory) or data files"))?;
    let mut found = Found { name, files: BTreeMap::new(), card_names: None, config_name: None, headerless: false };
    if let Some(ds) = &spec.dataset {
        if Path::new(ds).is_file() {
            bail!("{ds} is a file: pass it as --train (and --validation/--test) instead of --dataset");
        }
        let d = discover::discover(
            &Source::parse(&with_revision(ds, spec.dataset_revision.as_deref())?, RepoKind::Dataset)?,
            &spec.label_column,
        )?;
        (found.card_names, found.config_name, found.headerless) = (d.class_names, d.config_name, d.names_file);
        found.files.extend(d.files);
    }
    for (split, p) in explicit {
        if let Some(p) = p {
            found.files.insert(split, vec![p.clone()]);
        }
    }
    if found.files.is_empty() {
        bail!("{}: no data files found", found.name);
    }
    Ok(found)
}

fn load_with(spec: &DataSpec, sink: &mut Sink) -> Result<Dataset> {
    let found = find_files(spec)?;
    // A names file beside headerless files is the layout of the original GoEmotions release:
    // text, then comma-separated label ids.
    let separator = spec.label_separator.as_deref().or(found.headerless.then_some(","));
    let cols =
        Columns { text: &spec.text_column, label: Some(&spec.label_column), separator, header: !found.headerless };
    let mut raw: Vec<(&'static str, Vec<RawFile>)> = Vec::new();
    for split in ["train", "validation", "test"] {
        if let Some(paths) = found.files.get(split) {
            let read = paths.iter().map(|p| readers::read_file(p, cols, sink)).collect::<Result<Vec<_>>>()?;
            raw.push((split, read));
        }
    }
    let metadata_names = raw.iter().flat_map(|(_, fs)| fs.iter()).find_map(|f| f.class_names.clone());
    let labels = match (&spec.label_names, metadata_names.or(found.card_names)) {
        (Some(names), _) => names.clone(),
        (None, Some(names)) => names,
        // Named from the training split (or the first split read when there is none).
        (None, None) => infer_label_names(&raw[0].1)?,
    };
    if labels.is_empty() {
        bail!("{}: no labels", found.name);
    }
    let mut seen = HashSet::new();
    if let Some(l) = labels.iter().find(|l| !seen.insert(*l)) {
        bail!("label name \"{}\" is given twice", label(l));
    }
    let multi_label = separator.is_some() || is_multi_label(&raw)?;
    let splits =
        raw.into_iter().map(|(split, files)| build_split(split, files, &labels, sink)).collect::<Result<_>>()?;
    let ds = Dataset { name: found.name, config_name: found.config_name, labels, splits, multi_label };
    check_labels_seen_in_train(&ds, sink)?;
    Ok(ds)
}

/// Whether the rows hold lists of labels. A dataset mixing single labels and lists is refused,
/// naming the first row of each kind: one stray list would otherwise turn the whole task
/// (validation included) into a multi-label one without a word.
fn is_multi_label(raw: &[(&'static str, Vec<RawFile>)]) -> Result<bool> {
    let rows = || raw.iter().flat_map(|(_, fs)| fs).flat_map(|f| f.rows.iter().map(move |r| (&f.path, r)));
    let is_list = |r: &RawRow| matches!(r.label, Some(RawLabel::List(_)));
    let first_list = rows().find(|(_, r)| is_list(r));
    let first_single = rows().find(|(_, r)| r.label.is_some() && !is_list(r));
    match (first_list, first_single) {
        (Some((lp, l)), Some((sp, s))) => bail!(
            "the data mixes single labels and lists of labels: {}:{} has a list, {}:{} a single label; \
             write every label as a list for multi-label data (or none as a list for single-label data)",
            lp.display(),
            l.line,
            sp.display(),
            s.line
        ),
        (list, _) => Ok(list.is_some()),
    }
}

/// The split `name` from its files' rows, with the labels mapped to ids (a label out of range
/// or not among `labels`, a row without labels and a label given twice in a row are row
/// problems).
fn build_split(name: &str, files: Vec<RawFile>, labels: &[String], sink: &mut Sink) -> Result<Split> {
    let index: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let mut s = Split {
        name: name.to_string(),
        files: Vec::new(),
        examples: Vec::new(),
        file_of: Vec::new(),
        sliced_from: None,
    };
    for (fi, f) in files.into_iter().enumerate() {
        s.files.push(f.path.clone());
        for row in f.rows {
            match label_ids(row.label.as_ref().expect("labelled data has labels"), labels, &index) {
                Ok(ids) => {
                    s.examples.push(Example { text: row.text, labels: ids, line: row.line });
                    s.file_of.push(fi);
                }
                Err(msg) => sink.row(&f.path, row.line, msg)?,
            }
        }
    }
    if s.is_empty() {
        let files: Vec<String> = s.files.iter().map(|p| p.display().to_string()).collect();
        let msg = format!("the {name} split ({}) has no usable rows", files.join(", "));
        if sink.strict {
            bail!("{msg}");
        }
        // Reading leniently, the rows' problems are reported; so is the empty split.
        sink.problems.push(RowProblem { file: s.files.first().cloned().unwrap_or_default(), line: 0, message: msg });
    }
    Ok(s)
}

/// The ids of a row's label (or labels), or why they cannot be used.
fn label_ids(
    raw: &RawLabel,
    labels: &[String],
    index: &HashMap<&str, usize>,
) -> std::result::Result<Vec<usize>, String> {
    let id = |l: &RawLabel| match l {
        RawLabel::Int(i) if *i >= 0 && (*i as usize) < labels.len() => Ok(*i as usize),
        RawLabel::Int(i) => {
            Err(format!("label {i} is out of range (the {} labels are {})", labels.len(), show_labels(labels)))
        }
        RawLabel::Name(n) => index.get(n.as_str()).copied().ok_or_else(|| {
            format!("label \"{}\" is not among the training labels ({})", label(n), show_labels(labels))
        }),
        RawLabel::List(_) => Err("a list of labels inside a list".to_string()),
    };
    let RawLabel::List(items) = raw else { return Ok(vec![id(raw)?]) };
    if items.is_empty() {
        return Err("no label (a text needs at least one)".to_string());
    }
    let ids = items.iter().map(id).collect::<std::result::Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    if let Some(dup) = ids.iter().find(|i| !seen.insert(**i)) {
        return Err(format!("label \"{}\" is given twice in one row", label(&labels[*dup])));
    }
    Ok(ids)
}

/// A label that appears in validation or test but never in train cannot be learned.
fn check_labels_seen_in_train(ds: &Dataset, sink: &mut Sink) -> Result<()> {
    let Some(train) = ds.split("train") else { return Ok(()) };
    let in_train: HashSet<usize> = train.examples.iter().flat_map(|e| e.labels.iter().copied()).collect();
    for s in ds.splits.iter().filter(|s| s.name != "train") {
        for (i, e) in s.examples.iter().enumerate() {
            if let Some(&l) = e.labels.iter().find(|l| !in_train.contains(l)) {
                let msg = format!(
                    "label \"{}\" occurs in the {} split but never in the training split",
                    label(&ds.labels[l]),
                    s.name
                );
                sink.row(&s.files[s.file_of[i]], e.line, msg)?;
            }
        }
    }
    Ok(())
}

/// Integer labels without declared names number their classes `0..=max`; a larger id than this
/// is a typo or not a label at all.
const MAX_INTEGER_LABELS: i64 = 100_000;

/// Label names when nothing declares them: sorted distinct names (as `datasets`'
/// `class_encode_column` does), or `0..=max` for integer labels.
fn infer_label_names(train: &[RawFile]) -> Result<Vec<String>> {
    let mut names = BTreeSet::new();
    let mut max_int: Option<i64> = None;
    for f in train {
        for r in &f.rows {
            let flat: Vec<&RawLabel> = match &r.label {
                Some(RawLabel::List(items)) => items.iter().collect(),
                Some(other) => vec![other],
                None => Vec::new(),
            };
            for l in flat {
                match l {
                    RawLabel::Name(n) => {
                        names.insert(n.clone());
                    }
                    RawLabel::Int(i) if *i < 0 => bail!("{}:{}: negative label {i}", f.path.display(), r.line),
                    RawLabel::Int(i) if *i >= MAX_INTEGER_LABELS => bail!(
                        "{}:{}: label id {i} would make {} classes; give --label-names for integer labels this large",
                        f.path.display(),
                        r.line,
                        *i as u64 + 1
                    ),
                    RawLabel::Int(i) => max_int = Some(max_int.map_or(*i, |m| m.max(*i))),
                    RawLabel::List(_) => {}
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

/// One text to classify, with the line (or row) it came from.
#[derive(Debug, Clone)]
pub struct InputText {
    pub line: usize,
    pub text: String,
}

/// Texts to classify from a file: one per line (`.txt` and other extensions), a field of JSON
/// lines (`.jsonl`), or a column of a CSV/TSV or parquet file. Empty texts are kept (the caller
/// reports them); malformed rows and invalid UTF-8 are errors naming the line.
pub fn read_texts(path: &Path, text_col: &str) -> Result<Vec<InputText>> {
    let mut sink = Sink { strict: true, problems: Vec::new() };
    let file = readers::read_file(path, Columns::text(text_col), &mut sink)?;
    Ok(file.rows.into_iter().map(|r| InputText { line: r.line, text: r.text }).collect())
}

/// Lines of standard input (invalid UTF-8 is an error naming the line).
pub fn read_stdin_texts() -> Result<Vec<InputText>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
    let mut sink = Sink { strict: true, problems: Vec::new() };
    let lines = readers::utf8_lines(&bytes, Path::new("<stdin>"), &mut sink)?;
    Ok(lines.into_iter().map(|(line, text)| InputText { line, text }).collect())
}
