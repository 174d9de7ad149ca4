//! Fuzzing every data reader: random bytes, and random structured rows (any Unicode, control
//! characters, separators, quotes, empty and odd labels), written as each format and read as
//! training data (strictly and leniently) and as texts to classify. Whatever the input, a reader
//! returns rows or an error; it never panics.
//!
//! CI runs `EMOTUNE_FUZZ_CASES` cases per target (default 2000, a few seconds); by hand, more:
//! `EMOTUNE_FUZZ_CASES=20000 cargo test --release --test fuzz_readers`.

use arrow_array::{ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray};
use emotune::data::{self, DataSpec};
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;

fn cases() -> u32 {
    std::env::var("EMOTUNE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Reads `train.<ext>` (and the same as validation) in every way a command does.
fn read_every_way(dir: &Path, ext: &str, bytes: &[u8]) {
    let (train, valid) = (dir.join(format!("train.{ext}")), dir.join(format!("validation.{ext}")));
    std::fs::write(&train, bytes).unwrap();
    std::fs::write(&valid, bytes).unwrap();
    let spec = DataSpec {
        train: Some(train.clone()),
        validation: Some(valid),
        text_column: "text".into(),
        label_column: "label".into(),
        ..Default::default()
    };
    let strict = data::load(&spec);
    let lenient = data::load_lenient(&spec);
    // Strict reading succeeds only when lenient reading found nothing wrong.
    if let (Ok(_), Ok((_, problems))) = (&strict, &lenient) {
        assert!(problems.is_empty(), "strict load passed what lenient load reports: {problems:?}");
    }
    let _ = data::read_texts(&train, "text");
}

/// Any text, biased towards what breaks formats: separators, quotes, braces, line breaks,
/// control and bidi characters.
fn text() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        ";",
        ",",
        "\t",
        "\"",
        "'",
        "{",
        "}",
        "[",
        "\n",
        "\r",
        "\u{1b}[31m",
        "\u{202e}",
        "\u{0}",
        "\u{feff}",
        " ",
    ]);
    prop::collection::vec(prop_oneof![any::<char>().prop_map(String::from), special.prop_map(String::from)], 0..20)
        .prop_map(|parts| parts.concat())
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "joy",
            "sadness",
            "anger",
            "",
            " ",
            "-1",
            "7",
            "1000000000",
            "99999999999999999999",
            "1.5"
        ])
        .prop_map(String::from),
        text(),
    ]
}

fn rows() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), label()), 0..30)
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn parquet_bytes(rows: &[(String, String)], dictionary: bool, int_labels: bool) -> Vec<u8> {
    let texts: ArrayRef = Arc::new(StringArray::from_iter(rows.iter().map(|(t, _)| Some(t.as_str()))));
    let labels: ArrayRef = match (int_labels, dictionary) {
        (true, _) => Arc::new(Int64Array::from_iter(rows.iter().map(|(_, l)| l.trim().parse::<i64>().ok()))),
        (false, true) => Arc::new(
            rows.iter().map(|(_, l)| Some(l.as_str())).collect::<DictionaryArray<arrow_array::types::Int32Type>>(),
        ),
        (false, false) => Arc::new(StringArray::from_iter(rows.iter().map(|(_, l)| Some(l.as_str())))),
    };
    let batch = RecordBatch::try_from_iter([("text", texts), ("label", labels)]).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_in_every_format(bytes in prop::collection::vec(any::<u8>(), 0..600), ext in prop::sample::select(vec!["txt", "csv", "tsv", "jsonl", "parquet"])) {
        let dir = tempfile::tempdir().unwrap();
        read_every_way(dir.path(), ext, &bytes);
    }

    #[test]
    fn semicolon_lines(rows in rows()) {
        let text: String = rows.iter().map(|(t, l)| format!("{t};{l}\n")).collect();
        read_every_way(tempfile::tempdir().unwrap().path(), "txt", text.as_bytes());
    }

    #[test]
    fn csv_and_tsv(rows in rows(), quoted in any::<bool>(), tsv in any::<bool>()) {
        let sep = if tsv { "\t" } else { "," };
        let field = |s: &str| if quoted { csv_field(s) } else { s.to_string() };
        let mut text = format!("text{sep}label\n");
        for (t, l) in &rows {
            text.push_str(&format!("{}{sep}{}\n", field(t), field(l)));
        }
        read_every_way(tempfile::tempdir().unwrap().path(), if tsv { "tsv" } else { "csv" }, text.as_bytes());
    }

    #[test]
    fn json_lines(rows in rows(), raw in any::<bool>()) {
        let mut text = String::new();
        for (t, l) in &rows {
            if raw {
                // Not always valid JSON: fields pasted in as they are.
                text.push_str(&format!("{{\"text\": \"{t}\", \"label\": {l}}}\n"));
            } else {
                let label = l.trim().parse::<i64>().map_or_else(|_| serde_json::json!(l), |i| serde_json::json!(i));
                text.push_str(&format!("{}\n", serde_json::json!({"text": t, "label": label})));
            }
        }
        read_every_way(tempfile::tempdir().unwrap().path(), "jsonl", text.as_bytes());
    }

    #[test]
    fn parquet_files(rows in rows(), dictionary in any::<bool>(), int_labels in any::<bool>()) {
        let bytes = parquet_bytes(&rows, dictionary, int_labels);
        read_every_way(tempfile::tempdir().unwrap().path(), "parquet", &bytes);
    }
}
