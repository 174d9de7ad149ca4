//! Inverted dropout as `torch.nn.Dropout`, with its keep mask drawn from a seeded ChaCha8 stream
//! (one `u32` per element, in order) and kept as bytes for the backward pass.

use super::buffer::{f32_slice, filled, ELEMS_PER_CHUNK};
use super::profile;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;

/// The keep/drop decisions of `n` elements for dropout probability `p`: one `u32` drawn per
/// element, in order, kept when below `(1 - p) * 2^32`; and the scale `1 / (1 - p)` of kept
/// values. The composed path in `model::Dropout` draws the same stream.
pub fn keep_mask(n: usize, p: f64, rng: &mut ChaCha8Rng) -> (Vec<bool>, f32) {
    let (mask, scale) = keep_bytes(n, p, rng);
    (mask.into_iter().map(|k| k != 0).collect(), scale)
}

/// [`keep_mask`] as bytes (1 keep, 0 drop). The stream is cut into chunks drawn in parallel,
/// each from its own copy of the generator moved to the chunk's first word: the same words as
/// drawing them one after the other, and `rng` is left where that would leave it.
fn keep_bytes(n: usize, p: f64, rng: &mut ChaCha8Rng) -> (Vec<u8>, f32) {
    const WORDS_PER_CHUNK: usize = 1 << 16;
    let keep = 1.0 - p;
    let threshold = (keep * 4294967296.0).min(4294967295.0) as u32;
    let start = rng.get_word_pos();
    let mut mask = vec![0u8; n];
    mask.par_chunks_mut(WORDS_PER_CHUNK).enumerate().for_each(|(i, chunk)| {
        let mut rng = rng.clone();
        rng.set_word_pos(start + (i * WORDS_PER_CHUNK) as u128);
        let mut words = [0u32; 256];
        for part in chunk.chunks_mut(words.len()) {
            let words = &mut words[..part.len()];
            rng.fill(words);
            for (m, &w) in part.iter_mut().zip(words.iter()) {
                *m = u8::from(w < threshold);
            }
        }
    });
    rng.set_word_pos(start + n as u128);
    (mask, (1.0 / keep) as f32)
}

/// [`keep_mask`] as shared bytes, or no mask (scale 1) when not dropping out.
pub(crate) fn optional_keep_mask(n: usize, dropout: Option<(f64, &mut ChaCha8Rng)>) -> (Option<Arc<Vec<u8>>>, f32) {
    match dropout {
        Some((p, rng)) if p > 0.0 => {
            let (mask, scale) = keep_bytes(n, p, rng);
            (Some(Arc::new(mask)), scale)
        }
        _ => (None, 1.0),
    }
}

/// Inverted dropout with the mask of [`keep_mask`], kept as bytes for the backward pass.
pub fn dropout(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    match optional_keep_mask(x.elem_count(), Some((p, rng))) {
        (Some(mask), scale) => x.contiguous()?.apply_op1(DropoutOp { mask, scale }),
        (None, _) => Ok(x.clone()),
    }
}

pub(crate) struct DropoutOp {
    pub(crate) mask: Arc<Vec<u8>>,
    pub(crate) scale: f32,
}

/// `x` with the dropped elements zeroed and the kept ones scaled (the dropout's forward, and
/// its backward on a gradient).
pub(crate) fn dropped(mask: &[u8], scale: f32, x: &[f32]) -> Vec<f32> {
    filled(x.len(), |y| {
        y.par_chunks_mut(ELEMS_PER_CHUNK)
            .zip(x.par_chunks(ELEMS_PER_CHUNK))
            .zip(mask.par_chunks(ELEMS_PER_CHUNK))
            .for_each(|((yc, xc), mc)| {
                for ((y, &x), &m) in yc.iter_mut().zip(xc).zip(mc) {
                    y.write(if m != 0 { x * scale } else { 0.0 });
                }
            })
    })
}

impl DropoutOp {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        dropped(&self.mask, self.scale, x)
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "emotune-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let x = f32_slice(s, l, "dropout x")?;
        if x.len() != self.mask.len() {
            bail!("dropout: mask has {} values, input {}", self.mask.len(), x.len());
        }
        Ok((CpuStorage::F32(self.apply(x)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&DropoutOp { mask: self.mask.clone(), scale: self.scale })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::max_diff;
    use candle_core::{DType, Device, Var};
    use rand::SeedableRng;

    #[test]
    fn dropout_backward_uses_the_forward_mask() {
        let x = Var::from_tensor(&Tensor::ones((100, 300), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let y = dropout(x.as_tensor(), 0.25, &mut rng).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        // With an all-ones input and upstream gradient, dx equals y elementwise.
        assert_eq!(max_diff(&y, gx), 0.0);
        let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let dropped = yv.iter().filter(|&&v| v == 0.0).count() as f64 / yv.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "dropped fraction {dropped}");
    }

    /// The chunks drawn in parallel are the words drawn one at a time, across chunk edges and
    /// from a position inside a block; the generator ends where the one-at-a-time draws leave it.
    #[test]
    fn the_parallel_mask_is_the_sequential_stream() {
        use rand::RngCore;
        let (mut parallel, mut sequential) = (ChaCha8Rng::seed_from_u64(5), ChaCha8Rng::seed_from_u64(5));
        for _ in 0..7 {
            parallel.next_u32();
            sequential.next_u32();
        }
        let n = 3 * (1 << 16) + 1234;
        let threshold = (0.9 * 4294967296.0) as u32;
        let want: Vec<u8> = (0..n).map(|_| u8::from(sequential.next_u32() < threshold)).collect();
        let (got, scale) = crate::model::kernels::testing::on_threads(3, || keep_bytes(n, 0.1, &mut parallel));
        assert!(got == want, "masks differ");
        assert_eq!(scale, (1.0f64 / 0.9) as f32);
        assert_eq!(parallel.get_word_pos(), sequential.get_word_pos());
        assert_eq!(parallel.next_u64(), sequential.next_u64());
    }
}
