//! What a newcomer reads first: every command's help fits 100 columns, says what each flag is
//! for, shows placeholders in the user's words, groups train's flags; one flag vocabulary across
//! commands; the Trainer's flag names accepted by train.

mod common;

use common::{bin, hf_home};
use std::process::Command;

const COMMANDS: [&str; 6] = ["train", "predict", "eval", "check-data", "serve", "bench"];

fn help(command: &str) -> String {
    // Not a terminal: clap wraps at 100 columns.
    let o = Command::new(bin()).args([command, "--help"]).env_remove("COLUMNS").output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

/// The long flags of a help page, each with the lines that describe it.
fn flags(page: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in page.lines() {
        let t = line.trim_start();
        // Flags are indented 2 or 6 columns, descriptions 10 (a wrapped line may start with --).
        let indent = line.len() - t.len();
        let is_flag = (2..=6).contains(&indent) && (t.starts_with("--") || (t.starts_with('-') && t.contains(", --")));
        if is_flag {
            let name = t.split("--").nth(1).unwrap().split([' ', '.', '<']).next().unwrap().to_string();
            // A short page puts the description on the flag's line, after two spaces.
            let same_line = t.find("  ").map(|at| t[at..].trim().to_string()).into_iter().collect();
            out.push((name, same_line));
        } else if let Some((_, desc)) = out.last_mut() {
            if !t.is_empty() && !line.ends_with(':') {
                desc.push(t.to_string());
            }
        }
    }
    out
}

#[test]
fn every_help_page_fits_100_columns_and_describes_every_flag() {
    for c in COMMANDS {
        let page = help(c);
        for line in page.lines() {
            assert!(line.chars().count() <= 100, "{c} --help: a line of {} columns: {line}", line.chars().count());
        }
        let flags = flags(&page);
        assert!(flags.len() > 5, "{c}: {flags:?}");
        for (name, desc) in &flags {
            let said = desc.iter().any(|d| !d.starts_with('[') && !d.starts_with("- "));
            assert!(said, "{c} --{name} has no description");
        }
        // Placeholders in the user's words (`<N>`, `<FILE>`), not internal field names.
        for p in page.split('<').skip(1).map(|r| r.split('>').next().unwrap()) {
            assert!(!p.contains('_'), "{c}: placeholder <{p}>");
        }
    }
}

#[test]
fn train_groups_its_flags_under_headings() {
    let page = help("train");
    let headings: Vec<&str> = page.lines().filter(|l| !l.starts_with(' ') && l.ends_with(':')).collect();
    for h in [
        "Model:",
        "Data:",
        "Optimiser:",
        "Schedule:",
        "Checkpoints and the best model:",
        "Output:",
        "Device and precision:",
    ] {
        assert!(headings.contains(&h), "train --help lacks {h}: {headings:?}");
    }
    assert!(headings.contains(&"Logging:"));
}

#[test]
fn one_name_one_meaning_across_commands() {
    let has = |c: &str, flag: &str| flags(&help(c)).iter().any(|(n, _)| n == flag);
    for c in ["train", "predict", "eval", "bench"] {
        assert!(has(c, "batch-size"), "{c} --batch-size");
    }
    for c in ["predict", "eval"] {
        assert!(has(c, "input"), "{c} --input");
    }
    // --limit means "the first N examples" wherever it exists; check-data shows N with --show.
    assert!(!has("check-data", "limit") && has("check-data", "show"));
    assert!(has("eval", "limit"));
    for c in ["train", "predict", "eval", "serve", "check-data"] {
        assert!(has(c, "revision"), "{c} --revision");
    }
    for c in ["train", "predict", "eval", "check-data"] {
        assert!(has(c, "max-length"), "{c} --max-length");
    }
}

/// The Trainer's names parse (the run then fails on the missing model, not on the flags).
#[test]
fn train_accepts_the_trainers_flag_names() {
    let o = Command::new(bin())
        .args([
            "train",
            "--model",
            "./no-such-model",
            "--num_train_epochs",
            "1",
            "--per-device-train-batch-size",
            "8",
            "--per_device_eval_batch_size",
            "8",
            "--learning_rate",
            "1e-3",
            "--warmup_ratio",
            "0.1",
            "--weight_decay",
            "0",
            "--load-best-model-at-end",
            "--metric_for_best_model",
            "accuracy",
            "--output_dir",
            "/tmp/emotune-never-written",
        ])
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("./no-such-model: no such directory"), "{err}");
}
