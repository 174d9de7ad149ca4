//! The int8 linear layer (`--quantize int8`) on every path this CPU has, in one run, on
//! DistilBERT-base's four projection shapes from one row to 64 × 40: what `Isa::for_rows`
//! chooses between (AMX tiles pad the rows to 32, so below some row count the vector paths win).
//! Prints the median of each path, alternating them, and the fastest.
//!
//! `cargo bench --bench int8 [-- RUNS [ROWS...]]` (default 30 runs per case; rows 1, 4, 8, 16,
//! 24, 32, 64 and 2560).

use emotune::model::kernels::qlinear::{Isa, QuantizedLinear, QuantizedRows};
use std::mem::MaybeUninit;
use std::time::Instant;

// The binary's allocator, so that buffers are placed as the binary places them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale
        })
        .collect()
}

fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let runs = numbers.first().copied().unwrap_or(30);
    let rows_list = if numbers.len() > 1 { numbers[1..].to_vec() } else { vec![1, 4, 8, 16, 24, 32, 64, 2560] };
    let paths: Vec<Isa> = Isa::available().into_iter().filter(|&i| i != Isa::Scalar).collect();
    println!("{} threads; median of {runs} runs; ms per product", rayon::current_num_threads());
    print!("{:>5} {:>5} {:>5} |", "rows", "in", "out");
    for isa in &paths {
        print!(" {:>26}", isa.name());
    }
    println!(" | fastest");
    for rows in rows_list {
        for (k, n) in [(768usize, 2304usize), (768, 768), (768, 3072), (3072, 768)] {
            let lin = QuantizedLinear::new(&values(n * k, 1, 0.04), &values(n, 2, 0.04), (n, k));
            let x = QuantizedRows::new(&values(rows * k, 3, 2.0), (rows, k));
            let mut times = vec![Vec::new(); paths.len()];
            let mut y = vec![MaybeUninit::<f32>::uninit(); rows * n];
            for i in 0..runs + 2 {
                for (p, &isa) in paths.iter().enumerate() {
                    let t = Instant::now();
                    lin.forward_with(isa, &x, &mut y, n);
                    if i >= 2 {
                        times[p].push(t.elapsed().as_secs_f64());
                    }
                    std::hint::black_box(&y);
                }
            }
            let medians: Vec<f64> = times.into_iter().map(median).collect();
            print!("{rows:>5} {k:>5} {n:>5} |");
            for m in &medians {
                print!(" {:>26.3}", m * 1e3);
            }
            let best = (0..paths.len()).min_by(|&a, &b| medians[a].total_cmp(&medians[b])).unwrap_or(0);
            println!(" | {}", paths.get(best).map_or("-", |i| i.name()));
        }
    }
}
