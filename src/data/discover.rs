//! Finding a dataset's split files: in a Hub dataset (through the HF cache) or a directory, by
//! the dataset card's `configs` when it has them, else by file names; and the label names its
//! card declares.

use crate::hub::Source;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// What [`discover`] found.
pub struct Discovered {
    pub files: Vec<(&'static str, Vec<PathBuf>)>,
    pub class_names: Option<Vec<String>>,
    pub config_name: Option<String>,
    /// The names came from a `labels.txt` beside the files (then CSV/TSV files have no header).
    pub names_file: bool,
}

/// The file that names the labels of headerless data, one per line in id order (as the
/// original GoEmotions release has it).
const NAMES_FILE: &str = "labels.txt";

/// Finds the split files of a Hub dataset or a directory: by the dataset card's `configs`
/// (the default config) when it has them, else by file names.
pub fn discover(source: &Source, label_column: &str) -> Result<Discovered> {
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
            class_names = card_class_names(card, cfg_name.as_deref(), label_column)
                .with_context(|| format!("{}: the dataset card's label names", source.describe()))?;
            config_name = cfg_name;
        }
    }
    let mut names_file = false;
    if chosen.is_empty() {
        if listing.iter().any(|f| f == NAMES_FILE) && class_names.is_none() {
            class_names = Some(read_names_file(&source.get(NAMES_FILE)?)?);
            names_file = true;
        }
        for f in listing.iter().filter(|f| is_data_file(f) && f.as_str() != NAMES_FILE) {
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
        check_one_format(source, split, &names)?;
        let paths = names.iter().map(|n| source.get(n)).collect::<Result<Vec<_>>>()?;
        files.push((split, paths));
    }
    Ok(Discovered { files, class_names, config_name, names_file })
}

/// A split read from files of two formats (`train.txt` beside `train.csv`) is most likely a
/// mistake: refuse it, naming them. Shards of one format (`train-00000-of-00002.parquet`, ...)
/// are fine.
fn check_one_format(source: &Source, split: &str, names: &[String]) -> Result<()> {
    let ext = |n: &String| Path::new(n).extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    if names.iter().any(|n| ext(n) != ext(&names[0])) {
        bail!(
            "{}: the {split} split would be read from files of different formats ({}); keep one of them",
            source.describe(),
            names.join(", ")
        );
    }
    Ok(())
}

/// Label names, one per line (blank lines ignored).
fn read_names_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if names.is_empty() {
        bail!("{}: names no labels", path.display());
    }
    Ok(names)
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

/// A split name and the path patterns of its files, from a card's `data_files`.
type DataFiles = (String, Vec<String>);

/// The default (or first) config of a card: its name and `(split, path patterns)`.
fn card_config(card: &serde_yaml::Value) -> Option<(Option<String>, Vec<DataFiles>)> {
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

/// ClassLabel names of `label_column` in the card's `dataset_info` for `config`: none when the
/// card does not give them, an error when it gives them in a form that could shift a name to
/// another id (a key that is not an id, a name that is not text, ids other than 0..n).
fn card_class_names(card: &serde_yaml::Value, config: Option<&str>, label_column: &str) -> Result<Option<Vec<String>>> {
    let Some(names) = card_class_label(card, config, label_column).and_then(|c| c.get("names")) else {
        return Ok(None);
    };
    let Some(map) = names.as_mapping() else {
        bail!("`{label_column}`'s class_label names are not a mapping of ids to names");
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in map {
        let id = match k {
            serde_yaml::Value::String(s) => s.parse::<usize>().ok(),
            serde_yaml::Value::Number(n) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        let (Some(id), Some(name)) = (id, v.as_str()) else {
            bail!("`{label_column}`'s class_label names: {k:?}: {v:?} is not an id and a name");
        };
        pairs.push((id, name.to_string()));
    }
    pairs.sort();
    if pairs.iter().enumerate().any(|(i, (id, _))| *id != i) {
        let ids: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        bail!("`{label_column}`'s class_label ids are {ids:?}, not 0 to {}", pairs.len().saturating_sub(1));
    }
    Ok(Some(pairs.into_iter().map(|(_, n)| n).collect()))
}

/// The `class_label` of `label_column` in the card's `dataset_info` for `config`, if it has one.
fn card_class_label<'a>(
    card: &'a serde_yaml::Value,
    config: Option<&str>,
    label_column: &str,
) -> Option<&'a serde_yaml::Value> {
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
    // `dtype: class_label:` for one label, `sequence: class_label:` for a list of them.
    feature.get("dtype").or_else(|| feature.get("sequence"))?.get("class_label")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_label_names_are_taken_whole_or_refused() {
        let card = |names: &str| -> serde_yaml::Value {
            let yaml = format!(
                "dataset_info:\n  features:\n  - name: label\n    dtype:\n      class_label:\n        names:\n{names}"
            );
            serde_yaml::from_str(&yaml).unwrap()
        };
        let good = card("          '0': sadness\n          '1': joy\n");
        assert_eq!(card_class_names(&good, None, "label").unwrap().unwrap(), ["sadness", "joy"]);
        assert!(card_class_names(&good, None, "other").unwrap().is_none(), "no such column: no names");
        // a key that is not an id would drop a name and move the rest up
        let e =
            card_class_names(&card("          '0': sadness\n          one: joy\n          '2': love\n"), None, "label");
        assert!(format!("{:#}", e.unwrap_err()).contains("is not an id and a name"));
        let e = card_class_names(&card("          '0': sadness\n          '2': love\n"), None, "label");
        assert!(format!("{:#}", e.unwrap_err()).contains("not 0 to 1"));
    }

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
