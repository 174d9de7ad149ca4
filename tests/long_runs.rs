//! Checkpoints, exact resume, kill -9 safety, early stopping and the best model.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn base_args(out: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        fixture("tiny-bert").to_str().unwrap(),
        "--dataset",
        "dair-ai/emotion",
        "--train-limit",
        "256",
        "--eval-limit",
        "64",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--learning-rate",
        "1e-3",
        "--output-dir",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String]) -> Output {
    Command::new(bin()).args(args).env("HF_HOME", hf_home()).env("HF_HUB_OFFLINE", "1").output().unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn same_files(a: &Path, b: &Path) {
    for f in ["model.safetensors", "metrics.jsonl", "training_dynamics.jsonl"] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between {} and {}", a.display(), b.display());
    }
}

fn reference_run(dir: &Path) -> PathBuf {
    let r = dir.join("reference");
    ok(&run(&base_args(&r)));
    r
}

#[test]
fn stopped_and_resumed_run_is_bitwise_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference_run(tmp.path());
    // Stop mid-epoch (step 5 of 8), resume from the newest checkpoint.
    let b = tmp.path().join("b");
    let o = run(&with(base_args(&b), &["--stop-after-step", "5"]));
    assert_eq!(o.status.code(), Some(130), "an interrupted run exits 130");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--resume") && err.contains("checkpoint-5"), "says how to resume: {err}");
    assert!(!b.join("model.safetensors").exists(), "no final model before the run ends");
    // A checkpoint is a model predict takes as it is (its tokenizer saved with it).
    let ckpt = b.join("checkpoint-5");
    let args = ["predict", "--model", ckpt.to_str().unwrap(), "--format", "jsonl", "i feel happy"];
    let o = run(&args.map(String::from));
    ok(&o);
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(line["label"].is_string(), "{line}");
    ok(&run(&with(base_args(&b), &["--resume"])));
    same_files(&reference, &b);
    // Stop right after an epoch boundary's step, resume from an explicit checkpoint.
    let c = tmp.path().join("c");
    let o = run(&with(base_args(&c), &["--stop-after-step", "9", "--save-steps", "3"]));
    assert_eq!(o.status.code(), Some(130));
    let ckpt = c.join("checkpoint-9");
    assert!(ckpt.join("trainer_state.json").is_file());
    // Given only the checkpoint, resuming takes the model, the data, the recipe and the output
    // directory from it.
    ok(&run(&["train".to_string(), "--resume".to_string(), ckpt.to_str().unwrap().to_string()]));
    same_files(&reference, &c);
    // Resuming with other hyperparameters is refused.
    let d = tmp.path().join("d");
    let o = run(&with(base_args(&d), &["--stop-after-step", "3"]));
    // Stopped before the first epoch ended: no empty table, a line that says so.
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Training Loss"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no epoch ended before the stop"));
    let mut changed = with(base_args(&d), &["--resume"]);
    let lr = changed.iter().position(|a| a == "1e-3").unwrap();
    changed[lr] = "5e-4".into();
    let o = run(&changed);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("learning_rate"));
}

/// Where a run is, from its output directory: the newest complete checkpoint's step and the
/// step of a checkpoint being assembled (`.checkpoint-N.tmp-PID`).
fn progress(out: &Path) -> (Option<u64>, Option<u64>) {
    let (mut done, mut writing) = (None, None);
    for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let step = |s: &str| s.parse::<u64>().ok();
        if let Some(n) = name.strip_prefix("checkpoint-").and_then(step) {
            done = done.max(Some(n));
        } else if let Some(n) = name.strip_prefix(".checkpoint-").and_then(|r| r.split(".tmp-").next()).and_then(step) {
            writing = writing.max(Some(n));
        }
    }
    (done, writing)
}

/// The moments a kill -9 is tested at, defined by the run's progress rather than by time.
#[derive(Debug, Clone, Copy)]
enum Moment {
    BeforeAnyCheckpoint,
    /// While checkpoint N >= this step is being assembled.
    WritingCheckpoint(u64),
    /// Between steps: checkpoint N >= this step complete, none being written.
    BetweenCheckpoints(u64),
}

impl Moment {
    fn reached(self, (done, writing): (Option<u64>, Option<u64>)) -> bool {
        match self {
            Moment::BeforeAnyCheckpoint => done.is_none() && writing.is_none(),
            Moment::WritingCheckpoint(n) => writing.is_some_and(|w| w >= n),
            Moment::BetweenCheckpoints(n) => done.is_some_and(|d| d >= n) && writing.is_none(),
        }
    }
}

fn signal(child: &std::process::Child, sig: i32) {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not yet reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Freezes the run (SIGSTOP) at `moment` and returns true, or false if it ended first. The
/// output directory is checked again once the process is frozen, so the moment is certain.
fn freeze_at(child: &mut std::process::Child, out: &Path, moment: Moment) -> bool {
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if moment.reached(progress(out)) {
            signal(child, libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(5)); // the stop is delivered asynchronously
            if moment.reached(progress(out)) {
                return true;
            }
            signal(child, libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn kill_9_always_leaves_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference_run(tmp.path());
    // Checkpoint every step (16 steps, an epoch boundary at 8), and kill at these moments.
    let moments = [
        Moment::BeforeAnyCheckpoint,
        Moment::WritingCheckpoint(2),
        Moment::BetweenCheckpoints(4),
        Moment::WritingCheckpoint(8),
        Moment::BetweenCheckpoints(12),
    ];
    for (i, moment) in moments.into_iter().enumerate() {
        let out = tmp.path().join(format!("k{i}"));
        let args = with(base_args(&out), &["--save-steps", "1", "--save-total-limit", "2"]);
        let mut child = Command::new(bin())
            .args(&args)
            .env("HF_HOME", hf_home())
            .env("HF_HUB_OFFLINE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(freeze_at(&mut child, &out, moment), "the run ended before {moment:?}: nothing was tested");
        child.kill().unwrap(); // SIGKILL, delivered to the stopped process
        child.wait().unwrap();
        assert!(!out.join("model.safetensors").exists(), "{moment:?}: the run finished");
        check_after_kill(&args, &out, &reference, moment);
    }
}

/// After a kill: no checkpoint, and resuming says so; or the newest checkpoint parses, and
/// resuming from it ends bitwise equal to the uninterrupted run.
fn check_after_kill(args: &[String], out: &Path, reference: &Path, moment: Moment) {
    match emotune::train::latest_checkpoint(out).unwrap() {
        None => {
            assert!(matches!(moment, Moment::BeforeAnyCheckpoint), "{moment:?}: no checkpoint survived");
            let o = run(&with(args.to_vec(), &["--resume"]));
            assert!(!o.status.success());
            assert!(String::from_utf8_lossy(&o.stderr).contains("no complete checkpoint"));
        }
        Some(ckpt) => {
            assert!(!matches!(moment, Moment::BeforeAnyCheckpoint), "a checkpoint before the first one: {ckpt:?}");
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
            assert!(state["global_step"].as_u64().unwrap() >= 1);
            for f in ["model.safetensors", "optimizer.safetensors"] {
                let bytes = std::fs::read(ckpt.join(f)).unwrap();
                safetensors::SafeTensors::deserialize(&bytes).expect("complete safetensors");
            }
            ok(&run(&with(args.to_vec(), &["--resume"])));
            same_files(reference, out);
        }
    }
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("overfit");
    // 32 training rows, a high learning rate and many epochs: validation loss soon rises.
    let args: Vec<String> = [
        "train",
        "--model",
        fixture("tiny-distilbert").to_str().unwrap(),
        "--dataset",
        "dair-ai/emotion",
        "--train-limit",
        "32",
        "--eval-limit",
        "64",
        "--batch-size",
        "8",
        "--epochs",
        "12",
        "--learning-rate",
        "5e-3",
        "--early-stopping-patience",
        "2",
        "--metric-for-best",
        "loss",
        "--load-best-at-end",
        "--output-dir",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = run(&args);
    ok(&o);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let losses: Vec<f64> = rows.iter().map(|r| r["validation_loss"].as_f64().unwrap()).collect();
    let best = losses.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    // It stops exactly `patience` evaluations after the best one, well before 12 epochs.
    assert_eq!(rows.len(), best + 3, "validation losses {losses:?}");
    assert!(rows.len() < 12, "the run should have stopped early: {losses:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("early stopping"), "{stderr}");
    assert!(stderr.contains("overfitting"), "the overfitting watch should have warned: {stderr}");
    // The output is the best epoch's model, and the card reports that epoch.
    let best_step = rows[best]["step"].as_u64().unwrap();
    let ckpt = out.join(format!("checkpoint-{best_step}"));
    assert!(ckpt.is_dir(), "the best checkpoint is kept");
    assert!(
        std::fs::read(ckpt.join("model.safetensors")).unwrap() == std::fs::read(out.join("model.safetensors")).unwrap()
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let acc = rows[best]["accuracy"].as_f64().unwrap();
    assert!(card.contains(&format!("value: {acc}")), "card reports the best epoch's accuracy");
    assert!(card.contains(&format!("the best epoch, {:.1} (step {best_step})", rows[best]["epoch"].as_f64().unwrap())));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("(step {best_step})")) && stdout.contains("the saved model is that epoch's"));
    assert!(out.join("learning_curves.png").is_file());
}

#[test]
fn balanced_class_weights_train() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w");
    ok(&run(&with(base_args(&out), &["--class-weights", "balanced"])));
    let args: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training_args.json")).unwrap()).unwrap();
    assert_eq!(args["class_weights"], "balanced");
    // Different weighting, different model.
    let plain = tmp.path().join("p");
    ok(&run(&base_args(&plain)));
    assert!(
        std::fs::read(out.join("model.safetensors")).unwrap()
            != std::fs::read(plain.join("model.safetensors")).unwrap()
    );
}
