//! Opt-in time accounting per kernel (`emotune bench --profile`): off by default, when it costs
//! one relaxed atomic load per kernel call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Seconds and calls per kernel name since the last `take`, in first-seen order; resets.
pub fn take() -> Vec<(&'static str, f64, u64)> {
    std::mem::take(&mut *crate::sync::lock(&TOTALS))
}

/// Adds the time from its creation to its drop to `name`'s total, when profiling is on.
pub struct Span(Option<(&'static str, Instant)>);

impl Span {
    pub fn new(name: &'static str) -> Span {
        Span(ON.load(Ordering::Relaxed).then(|| (name, Instant::now())))
    }
}

/// Consecutive sections of one kernel: `start` ends the section before.
#[derive(Default)]
pub struct Sections(Option<Span>);

impl Sections {
    pub fn start(&mut self, name: &'static str) {
        self.0 = None;
        self.0 = Some(Span::new(name));
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((name, t0)) = self.0 {
            let dt = t0.elapsed().as_secs_f64();
            let mut totals = crate::sync::lock(&TOTALS);
            match totals.iter_mut().find(|(n, _, _)| *n == name) {
                Some(entry) => {
                    entry.1 += dt;
                    entry.2 += 1;
                }
                None => totals.push((name, dt, 1)),
            }
        }
    }
}
