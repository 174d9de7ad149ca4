//! Which rows each step trains on: the per-epoch shuffle (optionally grouped by length, as
//! Transformers' `LengthGroupedSampler`), and the balanced class weights of the loss.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Steps per epoch (the last partial batch counts, as the Trainer's DataLoader keeps it).
pub fn steps_per_epoch(n: usize, batch: usize) -> usize {
    n.div_ceil(batch)
}

/// The order of one epoch's rows: a permutation drawn from `rng`, grouped by length when
/// `lengths` is given.
pub fn epoch_order(n: usize, rng: &mut ChaCha8Rng, lengths: Option<&[usize]>, batch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    match lengths {
        Some(lengths) => group_by_length(order, lengths, batch),
        None => order,
    }
}

/// Transformers' `LengthGroupedSampler` on an already shuffled order: mega-batches of
/// `min(n / (4 * batch), 50)` batches, each sorted by decreasing length, with the longest
/// example moved to the very front (so that running out of memory happens at once).
pub fn group_by_length(order: Vec<usize>, lengths: &[usize], batch: usize) -> Vec<usize> {
    let mult = (order.len() / (batch * 4)).clamp(1, 50);
    let mega = mult * batch;
    let mut megabatches: Vec<Vec<usize>> = order
        .chunks(mega)
        .map(|c| {
            let mut m = c.to_vec();
            // Stable, like Python's sorted(): equal lengths keep the shuffled order.
            m.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
            m
        })
        .collect();
    let max_idx = megabatches
        .iter()
        .enumerate()
        .fold((0, 0), |best, (i, m)| if lengths[m[0]] > best.1 { (i, lengths[m[0]]) } else { best })
        .0;
    if max_idx != 0 {
        let (first, rest) = megabatches.split_at_mut(max_idx);
        std::mem::swap(&mut first[0][0], &mut rest[0][0]);
    }
    megabatches.into_iter().flatten().collect()
}

/// `n / (k * count_c)` per class (0 for a class without rows).
pub fn balanced_weights(gold: &[usize], k: usize) -> Vec<f32> {
    let mut counts = vec![0usize; k];
    for &g in gold {
        counts[g] += 1;
    }
    counts.iter().map(|&c| if c == 0 { 0.0 } else { gold.len() as f32 / (k as f32 * c as f32) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn group_by_length_is_a_permutation_sorted_within_megabatches() {
        let n = 1000;
        let lengths: Vec<usize> = (0..n).map(|i| (i * 7919) % 97 + 3).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(3));
        let grouped = group_by_length(order.clone(), &lengths, 8);
        let mut sorted = grouped.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        // mult = min(1000 / 32, 50) = 31 → mega-batches of 248; each non-increasing except the
        // swapped first element.
        assert_eq!(lengths[grouped[0]], *lengths.iter().max().unwrap());
        for m in grouped.chunks(248) {
            assert!(m[1..].windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        // Batches of similar lengths pad far less than random ones.
        let pad = |o: &[usize]| -> usize {
            o.chunks(8).map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len()).sum()
        };
        assert!(pad(&grouped) * 10 < pad(&order) * 7, "{} vs {}", pad(&grouped), pad(&order));
    }

    #[test]
    fn balanced_weights_follow_scikit_learn() {
        // compute_class_weight("balanced", classes=[0, 1, 2], y=[0, 0, 0, 1]) = [4/9, 4/3, 0 (absent)]
        let w = balanced_weights(&[0, 0, 0, 1], 3);
        assert_eq!(w, vec![4.0 / 9.0, 4.0 / 3.0, 0.0]);
    }
}
