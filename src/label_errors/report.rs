//! What a label-error search found, for people (a ranked table, the likely confusions) and for
//! tools (CSV or JSON lines, one suspect per row, ranked).

use super::{LabelErrors, Suspect};
use crate::display::{clip, escape, label, ShortLocations};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The report as printed: the method, how many rows, the likely confusions and the `show`
/// most suspect rows.
pub fn format(r: &LabelErrors, show: usize) -> String {
    let mut s = String::from("\nLabel errors\n");
    let pct = 100.0 * r.suspects.len() as f64 / r.rows.max(1) as f64;
    let _ = writeln!(
        s,
        "{}: {} of {} training rows flagged ({pct:.1}%) in {:.0} s",
        r.method,
        r.suspects.len(),
        r.rows,
        r.seconds
    );
    if !r.pairs.is_empty() {
        let estimated = r.confident_learning.is_some();
        let _ = writeln!(
            s,
            "Given -> likely label: {}",
            if estimated { "estimated rows (flagged)" } else { "flagged rows" }
        );
        for (g, x, est, flagged) in r.pairs.iter().take(show) {
            let count = if estimated { format!("{est} ({flagged})") } else { flagged.to_string() };
            let _ = writeln!(s, "  {} -> {}: {count}", label(g), label(x));
        }
    }
    if r.suspects.is_empty() {
        return s;
    }
    let shown = &r.suspects[..r.suspects.len().min(show)];
    let short = ShortLocations::new(shown.iter().map(|x| ("train", x.location.as_str())));
    let _ = writeln!(s, "Most suspect rows ({} ascending):", r.score);
    let _ = writeln!(s, "{:>5} {:>9}  {:<10} {:<10} location: text", "rank", "score", "given", "likely");
    for x in shown {
        let _ = writeln!(
            s,
            "{:>5} {:>9.4}  {:<10} {:<10} {}: \"{}\"",
            x.rank,
            x.score,
            clip(&x.given, 10),
            clip(&x.suggested, 10),
            escape(&short.show(&x.location)),
            clip(&x.text, 90)
        );
    }
    if r.suspects.len() > show {
        let _ = writeln!(s, "... and {} more (all of them: --label-errors-out FILE)", r.suspects.len() - show);
    }
    s.push_str(&short.legend());
    s
}

/// Writes the ranked suspects to `path`: CSV for `.csv`, JSON lines for `.jsonl`.
pub fn write(path: &Path, r: &LabelErrors) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "csv" => crate::fsx::write_atomic(path, &csv_bytes(&r.suspects)?),
        "jsonl" => crate::fsx::write_json_lines_atomic(path, &r.suspects),
        _ => bail!("--label-errors-out: {} must end in .csv or .jsonl", path.display()),
    }
}

fn csv_bytes(suspects: &[Suspect]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["rank", "location", "given", "suggested", "score", "text"])?;
    for x in suspects {
        w.write_record([&x.rank.to_string(), &x.location, &x.given, &x.suggested, &x.score.to_string(), &x.text])?;
    }
    w.into_inner().context("writing CSV")
}
