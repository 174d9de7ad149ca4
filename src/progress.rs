//! Progress of long work: a bar with rate and ETA on a terminal, and plain lines with the same
//! facts when stderr is a log file; and the status lines of every command, which `-q` ("only
//! errors") silences in this one place.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: from now on no status lines, bars or plain progress lines, only errors.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed)
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A status line on stderr (what the command is doing, a warning), unless `-q`.
#[macro_export]
macro_rules! status {
    ($($arg:tt)*) => {
        if !$crate::progress::quiet() {
            eprintln!($($arg)*)
        }
    };
}

/// A bar of `len` units (`unit`: "step", "text") labelled `what`, with position, rate and ETA.
/// The rate reads as the logs say it: `2.66 s/step` when slower than one a second, else
/// `37.2 texts/s`.
pub fn bar(len: u64, what: &str, unit: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {{rate}} ETA {{eta}}"))
            .expect("valid template")
            .with_key("rate", move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(s.per_sec(), unit));
            })
            .progress_chars("=> "),
    );
    if quiet() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// A bar of `len` bytes labelled `what`, with bytes, rate and ETA (hidden when `len` is 0).
pub fn bytes_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    if quiet() || len == 0 {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// `per_sec` units a second, in the words a person reads: seconds per unit below one a second.
fn rate(per_sec: f64, unit: &str) -> String {
    match per_sec {
        r if !r.is_finite() || r <= 0.0 => String::new(),
        r if r < 1.0 => format!("{:.2} s/{unit}", 1.0 / r),
        r => format!("{r:.1} {unit}s/s"),
    }
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
    crate::status!("  step {pos}/{total}: loss {loss:.4}, {per_step:.2} s/step, ETA {eta:.0} s");
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_have_units_and_few_decimals() {
        assert_eq!(super::rate(0.376, "step"), "2.66 s/step");
        assert_eq!(super::rate(37.21, "text"), "37.2 texts/s");
        assert_eq!(super::rate(0.0, "step"), "");
    }
}
