//! Progress of long work: a bar with rate and ETA on a terminal, and plain lines with the same
//! facts when stderr is a log file.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

/// A bar of `len` steps labelled `what`, with position, rate and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// For logs (stderr not a terminal): a line about every tenth of the work, with the loss, the
/// time per step and the ETA. `done_now`/`todo_now` count the steps of this process (a resumed
/// run starts part-way), `pos` of `total` is the position in the epoch.
pub fn report_plain(done_now: usize, todo_now: usize, pos: usize, total: usize, since: Instant, loss: f32) {
    let every = (total / 10).max(1);
    if !pos.is_multiple_of(every) && pos != total {
        return;
    }
    let per_step = since.elapsed().as_secs_f64() / done_now.max(1) as f64;
    let eta = per_step * todo_now.saturating_sub(done_now) as f64;
    eprintln!("  step {pos}/{total}: loss {loss:.4}, {per_step:.2} s/step, ETA {eta:.0} s");
}
