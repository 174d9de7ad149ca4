//! The batching queue between the HTTP handlers and the inference workers: requests wait here
//! and a worker takes as many whole requests as fit one forward pass under the token budget,
//! scores them together and answers each with its own rows, in order.

use super::metrics::Metrics;
use crate::infer::{score, Predictor, Scores};
use crate::sync::{lock, wait};
use crate::tokenize::Tokenized;
use anyhow::Result;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a worker sends back for one request.
#[derive(Debug)]
pub struct Answer {
    /// The scores of the request's rows: probabilities, or logits when raw.
    pub scores: Vec<Vec<f32>>,
    /// How long the request waited for a worker.
    pub queue: Duration,
    /// How long the forward pass that scored it took.
    pub inference: Duration,
}

/// Why a request got no scores.
#[derive(Debug)]
pub enum Failure {
    /// The model refused or failed (a non-finite output, an error from a kernel).
    Model(String),
    /// The worker's scoring panicked: a defect of ours. The worker carries on with the next
    /// batch.
    Panic(String),
}

/// The answer to one request, or why there is none.
pub type Reply = Result<Answer, Failure>;

/// One request's tokenised inputs, waiting for a worker.
pub struct Job {
    pub rows: Vec<Tokenized>,
    pub raw_scores: bool,
    pub reply: oneshot::Sender<Reply>,
    /// When it was queued.
    pub queued: Instant,
}

/// Jobs in arrival order, and whether the queue is closed.
#[derive(Default)]
pub struct Queue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

fn longest(job: &Job) -> usize {
    job.rows.iter().map(|r| r.ids.len()).max().unwrap_or(0)
}

impl Queue {
    pub fn push(&self, job: Job) {
        lock(&self.jobs).0.push_back(job);
        self.ready.notify_one();
    }

    /// No more jobs come; workers finish what is queued and stop.
    pub fn close(&self) {
        lock(&self.jobs).1 = true;
        self.ready.notify_all();
    }

    /// Blocks until a job is queued (true) or the queue is closed and empty (false).
    pub fn wait_for_work(&self) -> bool {
        let mut guard = lock(&self.jobs);
        while guard.0.is_empty() {
            if guard.1 {
                return false;
            }
            guard = wait(&self.ready, guard);
        }
        true
    }

    /// Waits for work and takes whole jobs, oldest first, while their rows fit `max_tokens`
    /// together (padded to the longest row). A single job over the budget comes alone. `None`
    /// once closed and drained.
    pub fn take_batch(&self, max_tokens: usize) -> Option<Vec<Job>> {
        let mut guard = lock(&self.jobs);
        while guard.0.is_empty() {
            if guard.1 {
                return None;
            }
            guard = wait(&self.ready, guard);
        }
        let first = guard.0.pop_front().expect("non-empty");
        let (mut rows, mut long) = (first.rows.len(), longest(&first));
        let mut batch = vec![first];
        while let Some(next) = guard.0.front() {
            let (n_rows, n_long) = (rows + next.rows.len(), long.max(longest(next)));
            if n_rows * n_long > max_tokens {
                break;
            }
            (rows, long) = (n_rows, n_long);
            batch.push(guard.0.pop_front().expect("non-empty"));
        }
        Some(batch)
    }
}

/// What a worker needs.
pub struct Worker {
    pub predictor: Arc<Predictor>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub max_tokens: usize,
    /// How long to wait, once a request is queued, for others to join its batch.
    pub delay: Duration,
}

impl Worker {
    /// Runs batches until the queue closes.
    pub fn run(&self) {
        self.run_with(|rows| self.score_rows(rows))
    }

    /// [`Worker::run`] with its scoring function. A panic in it fails that batch's requests
    /// (the handlers answer 500) and the worker goes on: with one worker, a panic that ended it
    /// would leave every later request waiting for ever.
    fn run_with(&self, score_rows: impl Fn(&[&Tokenized]) -> Result<Scores>) {
        loop {
            if !self.delay.is_zero() && self.queue.wait_for_work() {
                std::thread::sleep(self.delay);
            }
            let Some(jobs) = self.queue.take_batch(self.max_tokens) else { break };
            self.metrics.queue_depth.fetch_sub(jobs.len() as i64, Ordering::SeqCst);
            let rows: Vec<&Tokenized> = jobs.iter().flat_map(|j| j.rows.iter()).collect();
            self.metrics.observe_batch(rows.len(), jobs.len());
            let started = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| score_rows(&rows)));
            let result = result.map_err(|p| {
                let what =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                let msg = format!("the inference worker panicked: {}", what.unwrap_or_else(|| "(no message)".into()));
                log::error!("{msg}");
                msg
            });
            let took = started.elapsed();
            self.metrics.observe_inference(took);
            answer(jobs, &result, started, took);
        }
    }

    /// The scores of `rows`; a batch above the budget (one large request) runs in budget-sized
    /// chunks.
    fn score_rows(&self, rows: &[&Tokenized]) -> Result<Scores> {
        let p = &self.predictor;
        let mut all = Scores::default();
        let longest = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(1);
        for part in rows.chunks((self.max_tokens / longest).max(1)) {
            let scores = score(&p.model, &p.encoder, part, &p.device)?;
            all.logits.extend(scores.logits);
            all.probs.extend(scores.probs);
        }
        Ok(all)
    }
}

/// Sends each job the scores of its own rows (they are consecutive in `result`), with its
/// time in the queue (until `started`) and the batch's inference time.
fn answer(jobs: Vec<Job>, result: &std::result::Result<Result<Scores>, String>, started: Instant, inference: Duration) {
    let mut offset = 0;
    for job in jobs {
        let n = job.rows.len();
        let reply = match result {
            Ok(Ok(s)) => Ok(Answer {
                scores: (if job.raw_scores { &s.logits } else { &s.probs })[offset..offset + n].to_vec(),
                queue: started.saturating_duration_since(job.queued),
                inference,
            }),
            Ok(Err(e)) => Err(Failure::Model(format!("{e:#}"))),
            Err(panic) => Err(Failure::Panic(panic.clone())),
        };
        offset += n;
        // The client may have gone away; its answer is simply dropped.
        let _ = job.reply.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n_rows: usize, len: usize, tag: u32) -> (Job, oneshot::Receiver<Reply>) {
        let rows = (0..n_rows).map(|_| Tokenized { ids: vec![tag; len], type_ids: vec![0; len], truncated: false });
        let (tx, rx) = oneshot::channel();
        (Job { rows: rows.collect(), raw_scores: false, reply: tx, queued: Instant::now() }, rx)
    }

    fn tags(batch: &[Job]) -> Vec<u32> {
        batch.iter().map(|j| j.rows[0].ids[0]).collect()
    }

    #[test]
    fn merges_whole_jobs_in_order_under_the_token_budget() {
        let q = Queue::default();
        for (tag, (rows, len)) in [(2, 10), (3, 10), (1, 30), (4, 5)].into_iter().enumerate() {
            q.push(job(rows, len, tag as u32).0);
        }
        // 2×10 + 3×10 = 50 tokens fit 60; adding 1×30 would pad 6 rows to 30 = 180.
        assert_eq!(tags(&q.take_batch(60).unwrap()), [0, 1]);
        // 1×30, then 5 rows padded to 30 = 150 > 60: alone.
        assert_eq!(tags(&q.take_batch(60).unwrap()), [2]);
        assert_eq!(tags(&q.take_batch(60).unwrap()), [3]);
    }

    #[test]
    fn a_job_over_the_budget_comes_alone_and_a_closed_queue_drains() {
        let q = Queue::default();
        q.push(job(8, 100, 7).0);
        q.push(job(1, 2, 8).0);
        q.close();
        assert_eq!(tags(&q.take_batch(64).unwrap()), [7]);
        assert_eq!(tags(&q.take_batch(64).unwrap()), [8]);
        assert!(q.take_batch(64).is_none());
    }

    #[test]
    fn a_waiting_worker_wakes_for_a_job() {
        let q = Arc::new(Queue::default());
        let taker = {
            let q = q.clone();
            std::thread::spawn(move || q.take_batch(100).map(|b| tags(&b)))
        };
        std::thread::sleep(Duration::from_millis(50));
        q.push(job(1, 3, 5).0);
        assert_eq!(taker.join().unwrap(), Some(vec![5]));
    }

    #[test]
    fn a_panic_fails_its_batch_and_the_worker_goes_on() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tiny-distilbert");
        let predictor = Arc::new(Predictor::from_dir(&dir, None, &candle_core::Device::Cpu).unwrap());
        let (queue, metrics) = (Arc::new(Queue::default()), Arc::new(Metrics::default()));
        let (first, first_rx) = job(1, 3, 1);
        let (second, second_rx) = job(1, 3, 2);
        let worker = Worker { predictor, queue: queue.clone(), metrics, max_tokens: 3, delay: Duration::ZERO };
        let batches = std::sync::atomic::AtomicUsize::new(0);
        queue.push(first);
        queue.push(second);
        queue.close();
        worker.run_with(|rows| {
            if batches.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("a defect");
            }
            let ones = vec![vec![1.0]; rows.len()];
            Ok(Scores { logits: ones.clone(), probs: ones.clone(), log_probs: ones })
        });
        match first_rx.blocking_recv().unwrap() {
            Err(Failure::Panic(m)) => assert!(m.contains("panicked: a defect"), "{m}"),
            other => panic!("the panicking batch: {other:?}"),
        }
        assert_eq!(second_rx.blocking_recv().unwrap().unwrap().scores, vec![vec![1.0]], "the next batch is scored");
    }

    #[test]
    fn a_batch_delay_lets_requests_arriving_together_share_a_batch() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tiny-distilbert");
        let predictor = Arc::new(Predictor::from_dir(&dir, None, &candle_core::Device::Cpu).unwrap());
        let (queue, metrics) = (Arc::new(Queue::default()), Arc::new(Metrics::default()));
        let delay = Duration::from_millis(300);
        let worker = Worker { predictor, queue: queue.clone(), metrics, max_tokens: 100, delay };
        let batches = Mutex::new(Vec::new());
        let (first, first_rx) = job(1, 3, 1);
        let (second, second_rx) = job(1, 3, 2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                worker.run_with(|rows| {
                    batches.lock().unwrap().push(rows.len());
                    let ones = vec![vec![1.0]; rows.len()];
                    Ok(Scores { logits: ones.clone(), probs: ones.clone(), log_probs: ones })
                })
            });
            queue.push(first);
            std::thread::sleep(Duration::from_millis(50));
            queue.push(second);
            queue.close();
        });
        assert_eq!(*batches.lock().unwrap(), [2], "the second request, 50 ms later, joined the first's batch");
        let waited = first_rx.blocking_recv().unwrap().unwrap().queue;
        assert!(waited >= delay, "the first waited the delay: {waited:?}");
        assert!(second_rx.blocking_recv().unwrap().is_ok());
    }

    /// Each job gets its own rows' scores, as if it had been scored alone.
    #[test]
    fn every_job_gets_its_own_scores() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tiny-distilbert");
        let predictor = Arc::new(Predictor::from_dir(&dir, None, &candle_core::Device::Cpu).unwrap());
        let texts = [vec!["i am so happy", "this is awful"], vec!["what a surprise"], vec!["i love you", "scary"]];
        let (queue, metrics) = (Arc::new(Queue::default()), Arc::new(Metrics::default()));
        let mut receivers = Vec::new();
        for t in &texts {
            let (tx, rx) = oneshot::channel();
            let rows = predictor.encoder.tokenize(t).unwrap();
            queue.push(Job { rows, raw_scores: false, reply: tx, queued: Instant::now() });
            receivers.push(rx);
        }
        queue.close();
        let worker = Worker { predictor: predictor.clone(), queue, metrics, max_tokens: 1024, delay: Duration::ZERO };
        worker.run();
        for (t, rx) in texts.iter().zip(receivers) {
            let got = rx.blocking_recv().unwrap().unwrap().scores;
            let alone: Vec<Vec<f32>> = predictor.predict(t, 8).unwrap().into_iter().map(|p| p.probs).collect();
            assert_eq!(got.len(), alone.len());
            for (g, a) in got.iter().zip(&alone) {
                assert!(g.iter().zip(a).all(|(x, y)| (x - y).abs() < 1e-5), "{g:?} vs {a:?}");
            }
        }
    }
}
