//! `train --exclude-rows FILE`: the rows a label-error report lists, taken out of a split.
//!
//! Rows are named as every message names them, `FILE:LINE`; the file part is compared after
//! resolving it on disk, so `data/train.txt:5` and `./data/train.txt:5` are the same row.

use super::Split;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The `FILE:LINE` locations `path` lists: the `location` field of a CSV report (with a
/// header) or of JSON lines, or one location per line of any other file.
pub fn read_locations(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read(path).with_context(|| format!("--exclude-rows: reading {}", path.display()))?;
    let text = String::from_utf8(text)
        .map_err(|e| anyhow::anyhow!("--exclude-rows: {} is not UTF-8 ({e})", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut out = Vec::new();
    match ext.as_str() {
        "jsonl" | "json" => {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let at = || format!("{}:{}", path.display(), i + 1);
                let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
                let loc = v.get("location").and_then(|l| l.as_str());
                out.push(loc.with_context(|| format!("{}: no \"location\" string", at()))?.to_string());
            }
        }
        "csv" => {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let headers = reader.headers().with_context(|| format!("{}: reading the header", path.display()))?;
            let Some(col) = headers.iter().position(|h| h == "location") else {
                bail!(
                    "{}: no `location` column (the header has: {})",
                    path.display(),
                    headers.iter().collect::<Vec<_>>().join(", ")
                );
            };
            for (i, record) in reader.records().enumerate() {
                let record = record.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
                out.push(record.get(col).unwrap_or_default().to_string());
            }
        }
        _ => out.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from)),
    }
    Ok(out)
}

/// A location's file resolved on disk (as written when it cannot be) and its line.
fn parse(location: &str) -> Option<(PathBuf, usize)> {
    let (file, line) = location.rsplit_once(':')?;
    Some((resolve(Path::new(file)), line.parse().ok()?))
}

fn resolve(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Removes from `split` the rows `locations` name; returns how many went. A location that is
/// not a row of the split is an error naming it (the report is of other data, or stale).
pub fn exclude(split: &mut Split, locations: &[String], listed_in: &Path) -> Result<usize> {
    let files: Vec<PathBuf> = split.files.iter().map(|f| resolve(f)).collect();
    let index: HashMap<(&Path, usize), usize> =
        (0..split.len()).map(|i| ((files[split.file_of[i]].as_path(), split.examples[i].line), i)).collect();
    let mut drop = HashSet::new();
    let mut unknown = Vec::new();
    for loc in locations {
        match parse(loc).and_then(|(f, l)| index.get(&(f.as_path(), l)).copied()) {
            Some(i) => {
                drop.insert(i);
            }
            None => unknown.push(loc.as_str()),
        }
    }
    if !unknown.is_empty() {
        let more = if unknown.len() > 5 { format!(" and {} more", unknown.len() - 5) } else { String::new() };
        bail!(
            "--exclude-rows: {} names {} row(s) that are not in the {} split ({}): {}{more}",
            listed_in.display(),
            unknown.len(),
            split.name,
            split.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
            crate::display::escape(&unknown[..unknown.len().min(5)].join(", "))
        );
    }
    let keep: Vec<usize> = (0..split.len()).filter(|i| !drop.contains(i)).collect();
    split.examples = keep.iter().map(|&i| split.examples[i].clone()).collect();
    split.file_of = keep.iter().map(|&i| split.file_of[i]).collect();
    Ok(drop.len())
}
