//! Finding mislabelled rows and the learning rate: confident learning against cleanlab's own
//! answers (`tests/golden/cleanlab_issues.json`, from bench/cleanlab_anchor.py golden), a planted
//! flip found by cross-fitting, training dynamics and AUM, `--exclude-rows`, `--find-lr`.

mod common;

use common::*;
use emotune::label_errors::confident::{find, RankBy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CLEANLAB: &str = "tests/golden/cleanlab_issues.json";

fn emotune(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("HF_HOME", hf_home()).env("HF_HUB_OFFLINE", "1").output().unwrap()
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "failed:\n{out}\n{err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn confident_learning_finds_what_cleanlab_finds() {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(CLEANLAB).unwrap()).unwrap();
    for (c, case) in doc["cases"].as_array().unwrap().iter().enumerate() {
        let k = case["k"].as_u64().unwrap() as usize;
        let labels: Vec<usize> =
            case["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        // float32 values, as emotune hands them on.
        let probs: Vec<f64> =
            case["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32 as f64).collect();
        let ids = |name: &str| -> Vec<usize> {
            case[name].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
        };
        let f = find(&probs, &labels, k, RankBy::SelfConfidence);
        for (a, b) in f.thresholds.iter().zip(case["thresholds"].as_array().unwrap()) {
            // Both are means of the same float32 values in f64; only the order of the sums differs.
            assert!((a - b.as_f64().unwrap()).abs() < 1e-12, "case {c}: threshold {a} vs {b}");
        }
        let joint: Vec<Vec<i64>> = serde_json::from_value(case["joint"].clone()).unwrap();
        assert!(!f.issues.is_empty(), "case {c} plants flips");
        let m = find(&probs, &labels, k, RankBy::NormalizedMargin);
        if f.joint == joint {
            assert_eq!(f.issues, ids("issues_self_confidence"), "case {c}: issues ranked by self-confidence");
            assert_eq!(m.issues, ids("issues_normalized_margin"), "case {c}: issues ranked by normalised margin");
            continue;
        }
        // Rounding the calibrated joint moves a unit between cells whose remainders tie, in the
        // order numpy's argsort leaves ties, which is not stable (SIMD sorts on AVX-512, case 2
        // here: 1.63 and 1.63 in one row). Then the joints differ by one in tied cells only, and
        // the flagged sets by at most one row per unit moved.
        let mut moved = 0;
        for (a, b) in f.joint.iter().zip(&joint) {
            assert_eq!(a.iter().sum::<i64>(), b.iter().sum::<i64>(), "case {c}: row totals");
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1), "case {c}: {:?} vs {joint:?}", f.joint);
            moved += a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<i64>() as usize;
        }
        for (ours, theirs) in [(&f.issues, ids("issues_self_confidence")), (&m.issues, ids("issues_normalized_margin"))]
        {
            let differ = ours.iter().filter(|i| !theirs.contains(i)).count()
                + theirs.iter().filter(|i| !ours.contains(i)).count();
            assert!(differ <= moved, "case {c}: {differ} rows differ, {moved} units moved");
        }
    }
}

/// 120 rows of two classes told apart by one word each, three of them labelled wrong.
fn separable(dir: &Path) -> (PathBuf, PathBuf, Vec<usize>) {
    let filler = ["the", "a", "my", "this", "that", "when", "it", "was", "today", "very", "so", "just"];
    let (joy, sad) = (["sunshine", "bright", "smile"], ["thunder", "gloom", "tears"]);
    let row = |i: usize, salt: usize| {
        // MurmurHash3's finaliser of (row, word, salt): no two rows share their words.
        let w = |j: usize| {
            let mut h = ((i as u64) << 32) | ((j as u64) << 8) | salt as u64;
            for m in [0xff51_afd7_ed55_8ccd_u64, 0xc4ce_b9fe_1a85_ec53] {
                h ^= h >> 33;
                h = h.wrapping_mul(m);
            }
            filler[((h ^ (h >> 33)) % filler.len() as u64) as usize]
        };
        let cue = if i.is_multiple_of(2) { joy[(i / 2) % 3] } else { sad[(i / 2) % 3] };
        format!("{} {} {} {cue} {} {}", w(0), w(1), w(2), w(3), w(4))
    };
    let flipped = [6usize, 18, 41];
    let mut train = String::new();
    for i in 0..120 {
        let mut joyful = i % 2 == 0;
        if flipped.contains(&(i + 1)) {
            joyful = !joyful;
        }
        train.push_str(&format!("{};{}\n", row(i, 0), if joyful { "joy" } else { "sadness" }));
    }
    let valid: String =
        (0..20).map(|i| format!("{} extra;{}\n", row(i, 3), if i % 2 == 0 { "joy" } else { "sadness" })).collect();
    let (t, v) = (dir.join("train.txt"), dir.join("validation.txt"));
    std::fs::write(&t, train).unwrap();
    std::fs::write(&v, valid).unwrap();
    (t, v, flipped.to_vec())
}

#[test]
fn cross_fitting_finds_planted_flips_and_train_leaves_them_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid, flipped) = separable(tmp.path());
    let (report, probs) = (tmp.path().join("suspects.csv"), tmp.path().join("probs.jsonl"));
    let model = fixture("tiny-distilbert");
    let args = [
        "check-data",
        "--train",
        train.to_str().unwrap(),
        "--validation",
        valid.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--label-errors",
        "--folds",
        "3",
        "--epochs",
        "8",
        "--learning-rate",
        "3e-3",
        "--batch-size",
        "8",
        "--label-errors-out",
        report.to_str().unwrap(),
        "--save-probabilities",
        probs.to_str().unwrap(),
    ];
    let out = ok(&emotune(&args));
    assert!(out.contains("3 of 120 training rows flagged"), "{out}");
    let text = std::fs::read_to_string(&report).unwrap();
    let mut lines: Vec<usize> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    lines.sort();
    assert_eq!(lines, flipped, "{text}");
    assert_eq!(std::fs::read_to_string(&probs).unwrap().lines().count(), 120);
    // The same folds, fits and flags again: seeded.
    let again = tmp.path().join("again.csv");
    let mut args2 = args.to_vec();
    let at = args2.iter().position(|a| *a == report.to_str().unwrap()).unwrap();
    args2[at] = again.to_str().unwrap();
    ok(&emotune(&args2));
    assert_eq!(std::fs::read(&report).unwrap(), std::fs::read(&again).unwrap());

    // train --exclude-rows takes the report and says how many rows it dropped.
    let out_dir = tmp.path().join("clean");
    let o = emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--validation",
        valid.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--exclude-rows",
        report.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("left out 3 training row(s)"));
    let dynamics = std::fs::read_to_string(out_dir.join("training_dynamics.jsonl")).unwrap();
    assert_eq!(dynamics.lines().count(), 117);
    assert!(!dynamics.contains(&format!("train.txt:{}\"", flipped[0])));
}

#[test]
fn exclude_rows_naming_rows_that_do_not_exist_is_an_error_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid, _) = separable(tmp.path());
    let list = tmp.path().join("rows.txt");
    let t = train.to_str().unwrap();
    std::fs::write(&list, format!("{t}:3\n{t}:500\nelsewhere.txt:2\n")).unwrap();
    let model = fixture("tiny-distilbert");
    let o = emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        t,
        "--validation",
        valid.to_str().unwrap(),
        "--exclude-rows",
        list.to_str().unwrap(),
        "-o",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("names 2 row(s) that are not in the train split"), "{err}");
    assert!(err.contains("train.txt:500") && err.contains("elsewhere.txt:2") && !err.contains("train.txt:3,"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing written");
}

#[test]
fn a_run_records_dynamics_and_label_errors_from_ranks_by_aum() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid, flipped) = separable(tmp.path());
    let run = tmp.path().join("run");
    let model = fixture("tiny-distilbert");
    ok(&emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--validation",
        valid.to_str().unwrap(),
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--learning-rate",
        "3e-3",
        "-o",
        run.to_str().unwrap(),
    ]));
    assert!(run.join("data_map.png").is_file());
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(run.join("training_dynamics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 120);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["row"], i);
        assert!(r["location"].as_str().unwrap().ends_with(&format!("train.txt:{}", i + 1)));
        assert_eq!(r["epochs"], 6);
        let p: Vec<f64> = r["gold_probability"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let mean = p.iter().sum::<f64>() / 6.0;
        let sd = (p.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 6.0).sqrt();
        // Means of six float32 values, summed in another order here: far below 1e-6.
        assert!((r["confidence"].as_f64().unwrap() - mean).abs() < 1e-6);
        assert!((r["variability"].as_f64().unwrap() - sd).abs() < 1e-6);
        assert!(["easy-to-learn", "hard-to-learn", "ambiguous"].contains(&r["region"].as_str().unwrap()));
    }
    // The planted flips trail their other label on average: the three lowest AUMs.
    let out = ok(&emotune(&[
        "check-data",
        "--train",
        train.to_str().unwrap(),
        "--validation",
        valid.to_str().unwrap(),
        "--label-errors-from",
        run.to_str().unwrap(),
        "--label-errors-out",
        tmp.path().join("aum.jsonl").to_str().unwrap(),
    ]));
    assert!(out.contains("area under the margin"), "{out}");
    let ranked: Vec<serde_json::Value> = std::fs::read_to_string(tmp.path().join("aum.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut top: Vec<usize> = ranked
        .iter()
        .take(3)
        .map(|r| r["location"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, flipped);
}

#[test]
fn find_lr_writes_its_points_and_suggests_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid, _) = separable(tmp.path());
    let out_dir = tmp.path().join("lr");
    let model = fixture("tiny-distilbert");
    let out = ok(&emotune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--validation",
        valid.to_str().unwrap(),
        "--batch-size",
        "8",
        "--find-lr",
        "--find-lr-steps",
        "60",
        "-o",
        out_dir.to_str().unwrap(),
    ]));
    assert!(out.contains("suggested learning rate"), "{out}");
    let points: Vec<serde_json::Value> = std::fs::read_to_string(out_dir.join("lr_find.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(points.len() > 10 && points.len() <= 60);
    assert_eq!(points[0]["learning_rate"], 1e-7);
    assert!(out_dir.join("lr_find.png").is_file());
    // Nothing else: no model, no checkpoints.
    let names: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
