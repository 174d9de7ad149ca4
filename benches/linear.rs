//! Float32 linear layers for inference, in one run: gemm (the training path's kernel, which
//! packs the weight on every call) against the panels packed once at load (what `predict`,
//! `eval` and `serve` run), on DistilBERT-base's four projection shapes at 1, 8 and 24 rows
//! (one text, a small batch, one 24-token text) and 64 × 40 rows. Prints the median of each
//! and the ratio, panels over gemm (below 1: the panels are faster).
//!
//! `cargo bench --bench linear [-- RUNS [ROWS...]]` (default 30 runs per case, alternating the
//! two; rows 1, 8, 24 and 2560).

use candle_core::{Device, Tensor};
use emotune::model::kernels::{self, prepared::Prepared};
use std::sync::Arc;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let runs = numbers.first().copied().unwrap_or(30);
    let rows_list = if numbers.len() > 1 { numbers[1..].to_vec() } else { vec![1, 8, 24, 2560] };
    println!(
        "panels: {}; {} threads; median of {runs} runs",
        kernels::panels::Isa::detect().name(),
        rayon::current_num_threads()
    );
    println!(
        "{:>5} {:>5} {:>5} | {:>9} {:>9} | {:>6} | {:>8}",
        "rows", "in", "out", "gemm ms", "panels ms", "ratio", "GFLOP/s"
    );
    for rows in rows_list {
        for (k, n) in [(768usize, 2304usize), (768, 768), (768, 3072), (3072, 768)] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
            let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
            let b = Tensor::randn(0f32, 0.02, n, &Device::Cpu)?;
            let packed = Arc::new(Prepared::f32(&w, &b)?);
            let (mut gemm, mut panels) = (Vec::new(), Vec::new());
            for i in 0..runs + 2 {
                let t = Instant::now();
                let y0 = kernels::linear(&x, &w, &b)?;
                let t_gemm = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let y1 = packed.forward(&x)?;
                let t_panels = t.elapsed().as_secs_f64();
                if i >= 2 {
                    gemm.push(t_gemm);
                    panels.push(t_panels);
                }
                let diff: f32 = (y0 - y1)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
                anyhow::ensure!(diff < 1e-3, "the two disagree by {diff}");
            }
            let (g, p) = (median(gemm), median(panels));
            let gflops = 2.0 * (rows * k * n) as f64 / p / 1e9;
            println!("{rows:>5} {k:>5} {n:>5} | {:>9.3} {:>9.3} | {:>6.2} | {gflops:>8.1}", g * 1e3, p * 1e3, p / g);
        }
    }
    Ok(())
}
