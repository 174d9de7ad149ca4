//! `emotune check-data`: the integrity of a labelled dataset before training on it.
//!
//! Errors (non-zero exit): rows that cannot be used (malformed, invalid UTF-8, empty or
//! whitespace-only text, unknown label), the same text with different labels, and texts shared
//! between splits (leakage). Warnings: duplicates within a split, control characters, class
//! imbalance, texts longer than the model's maximum length.

use crate::data::{self, DataSpec, Dataset, RowProblem};
use crate::display::{clip, escape, label, labels, ShortLocations, LABEL_CHARS};
use crate::tokenize::TextEncoder;
use anyhow::Result;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct SplitCounts {
    pub split: String,
    pub rows: usize,
    /// Rows per label, in label-id order.
    pub per_label: Vec<usize>,
    /// Largest label count over the smallest (infinite when a label has no rows).
    pub imbalance_ratio: f64,
}

/// One text found at several places.
#[derive(Debug, Clone, Serialize)]
pub struct TextGroup {
    pub text: String,
    /// `(split, file:line, label)` of every occurrence.
    pub occurrences: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub split: String,
    pub location: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LengthStats {
    pub split: String,
    pub min: usize,
    pub mean: f64,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
    /// Rows with more tokens than the model accepts (they would be truncated).
    pub over_max: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub data: String,
    pub labels: Vec<String>,
    pub counts: Vec<SplitCounts>,
    pub unusable_rows: Vec<RowProblem>,
    pub conflicting_labels: Vec<TextGroup>,
    pub leakage: Vec<TextGroup>,
    pub duplicates: Vec<TextGroup>,
    pub control_characters: Vec<Finding>,
    pub max_length: Option<usize>,
    pub token_lengths: Vec<LengthStats>,
    /// For multi-label data: labels per text and the labels that go together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabelStats>,
}

/// How many labels the texts of a split carry.
#[derive(Debug, Clone, Serialize)]
pub struct Cardinality {
    pub split: String,
    /// Labels per text, on average (`label cardinality`).
    pub mean: f64,
    pub max: usize,
    /// Texts with more than one label.
    pub several: usize,
}

/// Multi-label facts of a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct MultiLabelStats {
    pub cardinality: Vec<Cardinality>,
    /// The label pairs that occur together most often in the training split (or the first).
    pub pairs: Vec<(String, String, usize)>,
}

impl CheckReport {
    pub fn error_count(&self) -> usize {
        self.unusable_rows.len() + self.conflicting_labels.len() + self.leakage.len()
    }

    pub fn warning_count(&self) -> usize {
        self.duplicates.len()
            + self.control_characters.len()
            + self.token_lengths.iter().map(|l| l.over_max).sum::<usize>()
    }
}

/// Text identity for duplicate checks: surrounding whitespace ignored.
fn key(text: &str) -> &str {
    text.trim()
}

/// Checks the data of `spec`; `encoder` measures token lengths when given.
pub fn run(spec: &DataSpec, encoder: Option<&TextEncoder>) -> Result<CheckReport> {
    let (ds, unusable_rows) = data::load_lenient(spec)?;
    let (conflicting_labels, leakage, duplicates) = repeated_texts(&ds);
    let token_lengths = match encoder {
        Some(enc) => token_lengths(&ds, enc)?,
        None => Vec::new(),
    };
    Ok(CheckReport {
        data: ds.name.clone(),
        labels: ds.labels.clone(),
        counts: counts(&ds),
        unusable_rows,
        conflicting_labels,
        leakage,
        duplicates,
        control_characters: control_characters(&ds),
        max_length: encoder.map(TextEncoder::max_length),
        token_lengths,
        multi_label: ds.multi_label.then(|| multi_label_stats(&ds)),
    })
}

/// Label cardinality per split and the most frequent co-occurring pairs.
fn multi_label_stats(ds: &Dataset) -> MultiLabelStats {
    let cardinality = ds
        .splits
        .iter()
        .map(|s| {
            let n: Vec<usize> = s.examples.iter().map(|e| e.labels.len()).collect();
            Cardinality {
                split: s.name.clone(),
                mean: n.iter().sum::<usize>() as f64 / n.len().max(1) as f64,
                max: n.iter().copied().max().unwrap_or(0),
                several: n.iter().filter(|&&c| c > 1).count(),
            }
        })
        .collect();
    let mut together: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    if let Some(split) = ds.split("train").or(ds.splits.first()) {
        for e in &split.examples {
            for (i, &a) in e.labels.iter().enumerate() {
                for &b in &e.labels[i + 1..] {
                    *together.entry((a.min(b), a.max(b))).or_default() += 1;
                }
            }
        }
    }
    let mut pairs: Vec<((usize, usize), usize)> = together.into_iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let pairs = pairs.into_iter().take(20).map(|((a, b), n)| (ds.labels[a].clone(), ds.labels[b].clone(), n)).collect();
    MultiLabelStats { cardinality, pairs }
}

fn counts(ds: &Dataset) -> Vec<SplitCounts> {
    ds.splits
        .iter()
        .map(|s| {
            let per_label = ds.counts(s);
            let max = per_label.iter().copied().max().unwrap_or(0) as f64;
            let min = per_label.iter().copied().min().unwrap_or(0) as f64;
            SplitCounts {
                split: s.name.clone(),
                rows: s.len(),
                imbalance_ratio: if min == 0.0 { f64::INFINITY } else { max / min },
                per_label,
            }
        })
        .collect()
}

/// An example's labels as a report shows them (`joy+love` for several).
fn label_set(ds: &Dataset, e: &data::Example) -> String {
    e.labels.iter().map(|&l| ds.labels[l].as_str()).collect::<Vec<_>>().join("+")
}

/// Every occurrence of `text` listed in `occ` as `(split index, row)`.
fn group(ds: &Dataset, text: &str, occ: &[(usize, usize)]) -> TextGroup {
    let occurrences = occ
        .iter()
        .map(|&(si, i)| {
            let s = &ds.splits[si];
            (s.name.clone(), s.location(i), label_set(ds, &s.examples[i]))
        })
        .collect();
    TextGroup { text: text.to_string(), occurrences }
}

/// Texts found more than once: `(with different labels, in several splits, repeated within a
/// split)`.
fn repeated_texts(ds: &Dataset) -> (Vec<TextGroup>, Vec<TextGroup>, Vec<TextGroup>) {
    // Every occurrence of every text, in split order.
    let mut by_text: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for (si, s) in ds.splits.iter().enumerate() {
        for (i, e) in s.examples.iter().enumerate() {
            by_text.entry(key(&e.text)).or_default().push((si, i));
        }
    }
    let (mut conflicting_labels, mut leakage, mut duplicates) = (Vec::new(), Vec::new(), Vec::new());
    for (text, occ) in by_text.iter().filter(|(_, occ)| occ.len() >= 2) {
        let set = |&(si, i): &(usize, usize)| {
            let mut l = ds.splits[si].examples[i].labels.clone();
            l.sort_unstable();
            l
        };
        if occ.iter().any(|o| set(o) != set(&occ[0])) {
            conflicting_labels.push(group(ds, text, occ));
        }
        if occ.iter().any(|&(si, _)| si != occ[0].0) {
            leakage.push(group(ds, text, occ));
        }
        let mut per_split: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for &o in occ {
            per_split.entry(o.0).or_default().push(o);
        }
        let mut splits: Vec<_> = per_split.into_iter().filter(|(_, v)| v.len() > 1).collect();
        splits.sort();
        duplicates.extend(splits.into_iter().map(|(_, v)| group(ds, text, &v)));
    }
    (conflicting_labels, leakage, duplicates)
}

fn control_characters(ds: &Dataset) -> Vec<Finding> {
    let mut found = Vec::new();
    for s in &ds.splits {
        for (i, e) in s.examples.iter().enumerate() {
            if let Some(c) = e.text.chars().find(|c| c.is_control() && *c != '\t') {
                let message = format!("control character U+{:04X}", c as u32);
                found.push(Finding { split: s.name.clone(), location: s.location(i), message });
            }
        }
    }
    found
}

fn token_lengths(ds: &Dataset, enc: &TextEncoder) -> Result<Vec<LengthStats>> {
    let mut stats = Vec::new();
    for s in &ds.splits {
        let mut lens = enc.token_lengths(&s.texts())?;
        if lens.is_empty() {
            continue;
        }
        let over_max = lens.iter().filter(|&&l| l > enc.max_length()).count();
        lens.sort_unstable();
        let pct = |p: f64| lens[((lens.len() - 1) as f64 * p).round() as usize];
        stats.push(LengthStats {
            split: s.name.clone(),
            min: lens[0],
            mean: lens.iter().sum::<usize>() as f64 / lens.len() as f64,
            p50: pct(0.5),
            p90: pct(0.9),
            p99: pct(0.99),
            max: *lens.last().expect("non-empty"),
            over_max,
        });
    }
    Ok(stats)
}

fn list_groups(s: &mut String, groups: &[TextGroup], limit: usize, short: &ShortLocations) {
    for g in groups.iter().take(limit) {
        let places: Vec<String> =
            g.occurrences.iter().map(|(_, loc, l)| format!("{} ({})", escape(&short.show(loc)), label(l))).collect();
        let _ = writeln!(s, "  \"{}\"\n      {}", clip(&g.text, 90), places.join(", "));
    }
    if groups.len() > limit {
        let _ = writeln!(s, "  ... and {} more (all in --json)", groups.len() - limit);
    }
}

/// The report for a person: counts, then each kind of problem with where to find it, then a
/// summary that says what to do.
pub fn format_report(r: &CheckReport, limit: usize) -> String {
    let mut s = format!("Data: {}   labels: {}\n\n", escape(&r.data), labels(&r.labels));
    write_counts(&mut s, r);
    if let Some(m) = &r.multi_label {
        write_multi_label(&mut s, m, limit);
    }
    write_token_lengths(&mut s, r);
    write_problems(&mut s, r, limit);
    write_summary(&mut s, r);
    s
}

fn write_multi_label(s: &mut String, m: &MultiLabelStats, limit: usize) {
    s.push_str("\nLabels per text (multi-label):\n");
    let _ = writeln!(s, "{:<12} {:>7} {:>5} {:>14}", "split", "mean", "max", "several labels");
    for c in &m.cardinality {
        let _ = writeln!(s, "{:<12} {:>7.3} {:>5} {:>14}", c.split, c.mean, c.max, c.several);
    }
    if !m.pairs.is_empty() {
        s.push_str("Labels that occur together most often:\n");
        for (a, b, n) in m.pairs.iter().take(limit) {
            let _ = writeln!(s, "  {} + {}: {n}", label(a), label(b));
        }
    }
}

fn write_counts(s: &mut String, r: &CheckReport) {
    let w = r.labels.iter().map(|l| l.chars().count()).max().unwrap_or(5).clamp(8, LABEL_CHARS);
    let _ = write!(s, "{:<12}", "split");
    for l in &r.labels {
        let _ = write!(s, " {:>w$}", clip(l, w));
    }
    let _ = writeln!(s, " {:>8} {:>10}", "total", "imbalance");
    for c in &r.counts {
        let _ = write!(s, "{:<12}", c.split);
        for n in &c.per_label {
            let _ = write!(s, " {n:>w$}");
        }
        let _ = writeln!(s, " {:>8} {:>10.2}", c.rows, c.imbalance_ratio);
    }
    s.push_str("(imbalance: rows of the largest label / rows of the smallest)\n");
}

fn write_token_lengths(s: &mut String, r: &CheckReport) {
    if r.token_lengths.is_empty() {
        return;
    }
    let max = r.max_length.unwrap_or(0);
    let _ = writeln!(s, "\nTokens per text (with special tokens; the model accepts {max}):");
    let _ = writeln!(
        s,
        "{:<12} {:>5} {:>7} {:>5} {:>5} {:>5} {:>5} {:>9}",
        "split", "min", "mean", "p50", "p90", "p99", "max", "too long"
    );
    for l in &r.token_lengths {
        let _ = writeln!(
            s,
            "{:<12} {:>5} {:>7.1} {:>5} {:>5} {:>5} {:>5} {:>9}",
            l.split, l.min, l.mean, l.p50, l.p90, l.p99, l.max, l.over_max
        );
    }
}

/// The locations the problem lists show (each list up to `limit`), for [`ShortLocations`].
fn shown_locations(r: &CheckReport, limit: usize) -> ShortLocations {
    let groups = [&r.conflicting_labels, &r.leakage, &r.duplicates];
    let in_groups = groups.into_iter().flat_map(|g| g.iter().take(limit)).flat_map(|g| &g.occurrences);
    let findings = r.control_characters.iter().take(limit).map(|f| (f.split.as_str(), f.location.as_str()));
    ShortLocations::new(in_groups.map(|(sp, loc, _)| (sp.as_str(), loc.as_str())).chain(findings))
}

fn write_problems(s: &mut String, r: &CheckReport, limit: usize) {
    let short = shown_locations(r, limit);
    let legend = short.legend();
    if !legend.is_empty() {
        let _ = write!(s, "\nRows below are split:line (or split/file:line) of\n{legend}");
    }
    let mut section = |title: String, body: String| {
        let _ = write!(s, "\n{title}\n{body}");
    };
    if !r.unusable_rows.is_empty() {
        let mut b = String::new();
        for p in r.unusable_rows.iter().take(limit) {
            let _ = writeln!(b, "  {}", escape(&p.to_string()));
        }
        if r.unusable_rows.len() > limit {
            let _ = writeln!(b, "  ... and {} more (all in --json)", r.unusable_rows.len() - limit);
        }
        section(format!("error: {} unusable row(s):", r.unusable_rows.len()), b);
    }
    let groups = [
        (&r.conflicting_labels, "error: {} text(s) carry different labels:"),
        (&r.leakage, "error: {} text(s) appear in more than one split (leakage):"),
        (&r.duplicates, "warning: {} text(s) are repeated within a split:"),
    ];
    for (found, title) in groups.into_iter().filter(|(g, _)| !g.is_empty()) {
        let mut b = String::new();
        list_groups(&mut b, found, limit, &short);
        section(title.replace("{}", &found.len().to_string()), b);
    }
    if !r.control_characters.is_empty() {
        let mut b = String::new();
        for f in r.control_characters.iter().take(limit) {
            let _ = writeln!(b, "  {}: {}", escape(&short.show(&f.location)), f.message);
        }
        section(format!("warning: {} text(s) contain control characters:", r.control_characters.len()), b);
    }
}

fn write_summary(s: &mut String, r: &CheckReport) {
    s.push_str("\nSummary: ");
    if r.error_count() == 0 && r.warning_count() == 0 {
        s.push_str("no problems found.\n");
        return;
    }
    let _ = writeln!(s, "{} error(s), {} warning(s).", r.error_count(), r.warning_count());
    let advice = [
        (
            !r.unusable_rows.is_empty(),
            "Fix or remove the unusable rows at the lines listed; training stops at the first of them.",
        ),
        (
            !r.conflicting_labels.is_empty(),
            "Decide the right label for each text with several labels and keep one row.",
        ),
        (
            !r.leakage.is_empty(),
            "Remove texts shared between splits from validation/test, or evaluation overstates accuracy.",
        ),
        (!r.duplicates.is_empty(), "Duplicates within a split weigh those texts more; deduplicate unless intended."),
    ];
    for (_, a) in advice.iter().filter(|(applies, _)| *applies) {
        let _ = writeln!(s, "- {a}");
    }
    let over: usize = r.token_lengths.iter().map(|l| l.over_max).sum();
    if over > 0 {
        let _ = writeln!(s, "- {over} text(s) exceed the model's maximum length and will be truncated.");
    }
    if let Some(c) = r.counts.iter().find(|c| c.imbalance_ratio > 3.0) {
        let _ = writeln!(
            s,
            "- The {} split is imbalanced ({:.1}:1); consider class weights and read per-class scores, not just accuracy.",
            c.split, c.imbalance_ratio
        );
    }
}
