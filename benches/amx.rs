//! Where a bf16 training product's time goes on the bf16 engine (AMX tiles, or `vdpbf16ps` on
//! AMD): rounding and packing each operand against
//! the tile kernel itself, for DistilBERT-base's projections at 64 × 40 rows, in the three
//! forms a training step computes (forward x·Wᵀ, backward dY·W and dYᵀ·X). Prints the median of
//! each and the kernel's rate.
//!
//! `cargo bench --bench amx [-- RUNS [ROWS]]` (default 20 runs, 2560 rows). Prints NOT CHECKED
//! on a CPU without an engine.

use emotune::model::kernels::{amx, amx_pack};

// The binary's allocator, so the operands and outputs are placed as the binary places them
// (with the system allocator a large output starts 16 bytes into a page, its tile rows straddle
// cache lines, and the kernel measured at half its rate).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::mem::MaybeUninit;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Times `C[m, n] = A[m, k] · B[k, n]` with A and B at the given (row, column) strides.
fn case(
    runs: usize,
    label: &str,
    (m, n, k): (usize, usize, usize),
    a: (&[f32], (usize, usize)),
    b: (&[f32], (usize, usize)),
) {
    let mut dst = vec![MaybeUninit::<f32>::uninit(); m * n];
    let (mut pa, mut pb, mut mm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        let t = Instant::now();
        let ap = amx_pack::pack_lhs(a.0, a.1, m, k);
        let t_a = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let bp = amx_pack::pack_rhs(b.0, b.1, k, n);
        let t_b = t.elapsed().as_secs_f64();
        let t = Instant::now();
        amx::matmul(&mut dst, n, amx::Start::Zero, &ap, &bp);
        let t_m = t.elapsed().as_secs_f64();
        if i >= 2 {
            pa.push(t_a);
            pb.push(t_b);
            mm.push(t_m);
        }
    }
    let (pa, pb, mm) = (median(pa), median(pb), median(mm));
    let rate = 2.0 * (m * n * k) as f64 / mm / 1e9;
    println!(
        "{label:<10} {m:>5} {n:>5} {k:>5} | {:>8.2} {:>8.2} {:>8.2} | {:>6.2} | {rate:>8.0}",
        pa * 1e3,
        pb * 1e3,
        mm * 1e3,
        (pa + pb) / mm
    );
}

fn main() {
    if !amx::available() {
        println!("amx bench: NOT CHECKED here ({}, or Linux refused the tile state)", amx::NO_ENGINE);
        return;
    }
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let runs = numbers.first().copied().unwrap_or(20);
    let rows = numbers.get(1).copied().unwrap_or(2560);
    println!("{} on {} threads; median of {runs} runs; times in ms", amx::name(), rayon::current_num_threads());
    println!(
        "{:<10} {:>5} {:>5} {:>5} | {:>8} {:>8} {:>8} | {:>6} | {:>8}",
        "product", "m", "n", "k", "pack A", "pack B", "kernel", "pack/k", "GFLOP/s"
    );
    for (k, n) in [(768usize, 2304usize), (768, 768), (768, 3072), (3072, 768)] {
        let x = rand(rows * k, 1);
        let w = rand(n * k, 2);
        let g = rand(rows * n, 3);
        case(runs, "x·Wᵀ", (rows, n, k), (&x, (k, 1)), (&w, (1, k)));
        case(runs, "dY·W", (rows, k, n), (&g, (n, 1)), (&w, (k, 1)));
        case(runs, "dYᵀ·X", (n, k, rows), (&g, (1, n)), (&x, (k, 1)));
    }
}
