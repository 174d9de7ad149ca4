//! Prometheus metrics of the server.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<Histogram>,
    batch_inputs: Mutex<Histogram>,
    batch_requests: Mutex<Histogram>,
    inference: Mutex<Histogram>,
    pub batches: AtomicU64,
    /// Requests waiting for a worker.
    pub queue_depth: AtomicI64,
}

impl Metrics {
    pub fn observe_request(&self, endpoint: &str, status: u16, took: Duration) {
        *crate::sync::lock(&self.requests).entry((endpoint.to_string(), status)).or_default() += 1;
        crate::sync::lock(&self.latency).observe(LATENCY_BUCKETS, took.as_secs_f64());
    }

    pub fn observe_batch(&self, inputs: usize, requests: usize) {
        self.batches.fetch_add(1, Ordering::SeqCst);
        crate::sync::lock(&self.batch_inputs).observe(BATCH_BUCKETS, inputs as f64);
        crate::sync::lock(&self.batch_requests).observe(BATCH_BUCKETS, requests as f64);
    }

    pub fn observe_inference(&self, took: Duration) {
        crate::sync::lock(&self.inference).observe(LATENCY_BUCKETS, took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP emotune_requests_total Requests by endpoint and status code.\n# TYPE emotune_requests_total counter\n");
        for ((ep, status), n) in crate::sync::lock(&self.requests).iter() {
            let _ = writeln!(s, "emotune_requests_total{{endpoint=\"{ep}\",status=\"{status}\"}} {n}");
        }
        s.push_str("# HELP emotune_request_duration_seconds Time from request to response.\n# TYPE emotune_request_duration_seconds histogram\n");
        crate::sync::lock(&self.latency).render(&mut s, "emotune_request_duration_seconds", "", LATENCY_BUCKETS);
        s.push_str("# HELP emotune_batch_inputs Inputs per forward batch.\n# TYPE emotune_batch_inputs histogram\n");
        crate::sync::lock(&self.batch_inputs).render(&mut s, "emotune_batch_inputs", "", BATCH_BUCKETS);
        s.push_str(
            "# HELP emotune_batch_requests Requests merged into one batch.\n# TYPE emotune_batch_requests histogram\n",
        );
        crate::sync::lock(&self.batch_requests).render(&mut s, "emotune_batch_requests", "", BATCH_BUCKETS);
        s.push_str("# HELP emotune_inference_duration_seconds Forward time per batch.\n# TYPE emotune_inference_duration_seconds histogram\n");
        crate::sync::lock(&self.inference).render(&mut s, "emotune_inference_duration_seconds", "", LATENCY_BUCKETS);
        let _ = writeln!(s, "# HELP emotune_batches_total Forward batches run.\n# TYPE emotune_batches_total counter\nemotune_batches_total {}", self.batches.load(Ordering::SeqCst));
        let _ = writeln!(s, "# HELP emotune_queue_depth Requests waiting for a worker.\n# TYPE emotune_queue_depth gauge\nemotune_queue_depth {}", self.queue_depth.load(Ordering::SeqCst));
        s
    }
}
