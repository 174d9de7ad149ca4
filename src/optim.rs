//! AdamW as `torch.optim.AdamW` computes it, and the schedule of Transformers'
//! `get_linear_schedule_with_warmup`.

use anyhow::{anyhow, bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cell::RefCell;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Transformers' Trainer exempts biases and LayerNorm weights from weight decay.
pub fn decays(name: &str) -> bool {
    let lname = name.to_ascii_lowercase();
    !(name.ends_with(".bias") || lname.contains("layernorm") || lname.contains("layer_norm"))
}

/// Linear warm-up from 0 to the peak rate, then linear decay to 0 at `total_steps`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LinearSchedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LinearSchedule {
    /// Transformers' name of this schedule (`lr_scheduler_type`).
    pub const NAME: &'static str = "linear";

    /// The learning rate of the optimiser step with 0-based index `step`.
    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let remaining = self.total_steps.saturating_sub(step) as f64;
            let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
            (remaining / span).max(0.0)
        };
        self.peak_lr * factor
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// AdamW's first and second moments of one parameter.
enum Moments {
    /// Host vectors, updated in place by the fused CPU kernel (f32 parameters on the CPU).
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Tensors on the parameter's device, updated with candle's ops (GPUs, and the composed
    /// path of [`crate::model::precision::composed_ops`]).
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Moments> {
        let t = var.as_tensor();
        let fused = t.device().is_cpu() && t.dtype() == DType::F32 && crate::model::precision::fused_allowed();
        if crate::model::precision::record_path(fused) {
            return Ok(Moments::Host { m: vec![0.0; t.elem_count()], v: vec![0.0; t.elem_count()] });
        }
        Ok(Moments::Device { m: t.zeros_like()?.to_dtype(DType::F32)?, v: t.zeros_like()?.to_dtype(DType::F32)? })
    }

    /// Both moments on the host, for a checkpoint: host ones borrowed where they are, device
    /// ones copied over.
    fn on_host(&self) -> Result<[Cow<'_, [f32]>; 2]> {
        Ok(match self {
            Moments::Host { m, v } => [Cow::Borrowed(m.as_slice()), Cow::Borrowed(v.as_slice())],
            Moments::Device { m, v } => {
                [Cow::Owned(m.flatten_all()?.to_vec1()?), Cow::Owned(v.flatten_all()?.to_vec1()?)]
            }
        })
    }

    fn set_from_host(&mut self, m_new: Vec<f32>, v_new: Vec<f32>) -> Result<()> {
        match self {
            Moments::Host { m, v } => (*m, *v) = (m_new, v_new),
            Moments::Device { m, v } => {
                *m = Tensor::from_vec(m_new, m.shape(), m.device())?;
                *v = Tensor::from_vec(v_new, v.shape(), v.device())?;
            }
        }
        Ok(())
    }
}

/// AdamW with per-parameter first and second moments, updated in place.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of steps taken so far.
    step: u64,
}

impl AdamW {
    /// Every parameter in `params`; weight decay applies where `decays(name)` holds.
    pub fn new<'a>(params: impl Iterator<Item = (&'a str, &'a Var)>, cfg: AdamWConfig) -> Result<AdamW> {
        let slots = params
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.to_string(),
                    var: var.clone(),
                    decay: decays(name),
                    moments: Moments::zeros(var)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { cfg, slots, step: 0 })
    }

    /// One update with learning rate `lr`. Every parameter must have a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with_clipping(grads, lr, None).map(|_| ())
    }

    /// Like [`AdamW::step`], after scaling the gradients so that their global L2 norm is at
    /// most `max_norm` (`torch.nn.utils.clip_grad_norm_`, which the Trainer applies with 1.0).
    /// Returns the norm before clipping.
    pub fn step_with_clipping(&mut self, grads: &GradStore, lr: f64, max_norm: Option<f64>) -> Result<f64> {
        let mut sq = 0f64;
        let mut device_sq = Vec::new();
        let mut f32_grads = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let grad = grads
                .get(slot.var.as_tensor())
                .ok_or_else(|| anyhow!("parameter {} received no gradient", slot.name))?
                .to_dtype(DType::F32)?
                .contiguous()?;
            if max_norm.is_some() {
                let (s, l) = grad.storage_and_layout();
                if let (Storage::Cpu(CpuStorage::F32(g)), Some((a, b))) = (&*s, l.contiguous_offsets()) {
                    sq += sum_of_squares(&g[a..b]);
                } else {
                    device_sq.push(grad.sqr()?.sum_all()?);
                }
            }
            f32_grads.push(grad);
        }
        if !device_sq.is_empty() {
            // One transfer for all of them, not one per parameter.
            let sums: Vec<f32> = Tensor::stack(&device_sq, 0)?.to_vec1()?;
            sq += sums.iter().map(|&x| x as f64).sum::<f64>();
        }
        let norm = sq.sqrt();
        let scale = match max_norm {
            Some(m) => (m / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.apply(&f32_grads, lr, scale as f32)?;
        Ok(norm)
    }

    fn apply(&mut self, grads: &[Tensor], lr: f64, grad_scale: f32) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
            let wd = if slot.decay { c.weight_decay } else { 0.0 };
            let (m, v) = match &mut slot.moments {
                Moments::Host { m, v } => (m, v),
                Moments::Device { m, v } => {
                    let k = Coefficients {
                        grad_scale,
                        lr,
                        wd,
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        bias1,
                        bias2_sqrt,
                    };
                    update_with_tensor_ops(&slot.var, m, v, grad, &k)?;
                    continue;
                }
            };
            let op = AdamWUpdate {
                grad,
                grad_scale,
                m: RefCell::new(m),
                v: RefCell::new(v),
                lr,
                wd,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                step_size: lr / bias1,
                bias2_sqrt,
            };
            slot.var.as_tensor().inplace_op1(&op)?;
        }
        Ok(())
    }

    /// The first parameter whose moments hold a NaN or an infinity, if any.
    pub fn first_non_finite_moment(&self) -> Option<&str> {
        let finite = |s: &Slot| match &s.moments {
            Moments::Host { m, v } => m.iter().chain(v).all(|x| x.is_finite()),
            // A NaN or an infinity anywhere makes the sum non-finite; an unreadable one counts as bad.
            Moments::Device { m, v } => [m, v].iter().all(|t| {
                t.sum_all().and_then(|x| x.to_dtype(DType::F64)?.to_scalar::<f64>()).is_ok_and(f64::is_finite)
            }),
        };
        self.slots.iter().find(|s| !finite(s)).map(|s| s.name.as_str())
    }

    /// Writes the moments and the step count (a checkpoint's `optimizer.safetensors`).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let moments = self.slots.iter().map(|s| s.moments.on_host()).collect::<Result<Vec<_>>>()?;
        let mut entries: Vec<(String, Vec<usize>, &[f32])> = Vec::with_capacity(2 * self.slots.len());
        for (s, [m, v]) in self.slots.iter().zip(&moments) {
            entries.push((format!("exp_avg.{}", s.name), s.var.dims().to_vec(), m));
            entries.push((format!("exp_avg_sq.{}", s.name), s.var.dims().to_vec(), v));
        }
        let meta = std::collections::HashMap::from([("step".to_string(), self.step.to_string())]);
        crate::fsx::write_atomic(path, &crate::weights::f32_safetensors_bytes(&entries, meta)?)
    }

    /// Restores what [`AdamW::save`] wrote.
    pub fn load(&mut self, path: &std::path::Path) -> Result<()> {
        let (mut tensors, meta) = crate::weights::read_f32_safetensors(path)?;
        self.step = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{}: no step count in the metadata", path.display()))?;
        for s in &mut self.slots {
            let mut take = |prefix: &str| {
                let key = format!("{prefix}.{}", s.name);
                let (_, data) = tensors.remove(&key).ok_or_else(|| anyhow!("{}: missing {key}", path.display()))?;
                if data.len() != s.var.elem_count() {
                    bail!("{}: {key} has {} values, expected {}", path.display(), data.len(), s.var.elem_count());
                }
                Ok(data)
            };
            let (m, v) = (take("exp_avg")?, take("exp_avg_sq")?);
            s.moments.set_from_host(m, v)?;
        }
        Ok(())
    }
}

/// The scalars of one AdamW step.
struct Coefficients {
    grad_scale: f32,
    lr: f64,
    wd: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bias1: f64,
    bias2_sqrt: f64,
}

/// [`AdamWUpdate`]'s arithmetic in candle's tensor ops, on any device: the same operations in
/// the same order (a division by a constant becomes a multiplication by its reciprocal, so
/// results can differ from the CPU kernel in the last bit).
fn update_with_tensor_ops(var: &Var, m: &mut Tensor, v: &mut Tensor, grad: &Tensor, k: &Coefficients) -> Result<()> {
    let g = if k.grad_scale == 1.0 { grad.clone() } else { (grad * k.grad_scale as f64)? };
    let p = var.as_tensor().to_dtype(DType::F32)?;
    let p = if k.wd != 0.0 { (p * (1.0 - k.lr * k.wd))? } else { p };
    let m_new = (&*m + ((&g - &*m)? * (1.0 - k.beta1))?)?;
    let v_new = ((&*v * k.beta2)? + ((&g * (1.0 - k.beta2))? * &g)?)?;
    let denom = ((v_new.sqrt()? / k.bias2_sqrt)? + k.eps)?;
    let p_new = (p - ((&m_new / &denom)? * (k.lr / k.bias1))?)?;
    var.set(&p_new.to_dtype(var.dtype())?)?;
    (*m, *v) = (m_new, v_new);
    Ok(())
}

/// The single-tensor AdamW update of `torch.optim.AdamW`, in its order of operations.
struct AdamWUpdate<'a> {
    grad: &'a Tensor,
    /// Gradient clipping factor (1 when not clipping).
    grad_scale: f32,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    lr: f64,
    wd: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step_size: f64,
    bias2_sqrt: f64,
}

impl candle_core::InplaceOp1 for AdamWUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(param), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("adamw: parameters must be contiguous float32");
        };
        let param = &mut param[start..end];
        let (g_storage, g_layout) = self.grad.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(g)), Some((gs, ge))) = (&*g_storage, g_layout.contiguous_offsets()) else {
            candle_core::bail!("adamw: gradient must be a contiguous float32 cpu tensor");
        };
        let g = &g[gs..ge];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if g.len() != param.len() || m.len() != param.len() {
            candle_core::bail!("adamw: gradient has {} elements, parameter {}", g.len(), param.len());
        }
        let k = ChunkCoefficients {
            // Multiplying by 1 changes no value, so "no decay" and "no clipping" need no branch
            // and the loop vectorises.
            decay: (1.0 - self.lr * self.wd) as f32,
            grad_scale: self.grad_scale,
            beta2: self.beta2 as f32,
            one_minus_b1: (1.0 - self.beta1) as f32,
            one_minus_b2: (1.0 - self.beta2) as f32,
            step_size: self.step_size as f32,
            bias2_sqrt: self.bias2_sqrt as f32,
            eps: self.eps as f32,
        };
        // Element-wise, so chunks run in parallel without changing any result.
        const CHUNK: usize = 1 << 15;
        param
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((param, g), m), v)| adamw_chunk(param, g, m, v, &k));
        Ok(())
    }
}

/// The `f32` scalars of [`adamw_chunk`].
struct ChunkCoefficients {
    decay: f32,
    grad_scale: f32,
    beta2: f32,
    one_minus_b1: f32,
    one_minus_b2: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

crate::model::kernels::simd::simd_dispatch! {
    /// [`AdamWUpdate`] on one chunk, in `torch.optim.AdamW`'s order of operations. Its square root
    /// and division are correctly rounded at any vector width, so every path gives the same bits;
    /// compiled for baseline x86-64 alone the loop stayed scalar, and the optimiser step was bound
    /// by `sqrtss`/`divss` rather than by memory (the README's speed section).
    fn adamw_chunk(param: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &ChunkCoefficients) {
        let n = param.len().min(g.len()).min(m.len()).min(v.len());
        let (param, g, m, v) = (&mut param[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i] * k.grad_scale;
            let p = param[i] * k.decay;
            // exp_avg.lerp_(grad, 1 - beta1)
            let mi = m[i] + k.one_minus_b1 * (gi - m[i]);
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            let vi = v[i] * k.beta2 + k.one_minus_b2 * gi * gi;
            let denom = vi.sqrt() / k.bias2_sqrt + k.eps;
            param[i] = p - k.step_size * (mi / denom);
            m[i] = mi;
            v[i] = vi;
        }
    }
}

/// `Σ x²` in f64, over fixed chunks in parallel (8 lanes each), the chunks' sums added in
/// order: the same result on any number of threads.
fn sum_of_squares(xs: &[f32]) -> f64 {
    const CHUNK: usize = 1 << 15;
    let partials: Vec<f64> = xs.par_chunks(CHUNK).map(chunk_sum_of_squares).collect();
    partials.iter().sum()
}

crate::model::kernels::simd::simd_dispatch! {
    /// `Σ x²` of one chunk in f64 over 8 lanes: the same additions in the same order at any
    /// vector width.
    fn chunk_sum_of_squares(c: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let mut lanes = c.chunks_exact(8);
        for l in &mut lanes {
            for i in 0..8 {
                acc[i] += (l[i] as f64) * (l[i] as f64);
            }
        }
        let tail: f64 = lanes.remainder().iter().map(|&x| (x as f64) * (x as f64)).sum();
        acc.iter().sum::<f64>() + tail
    }
}

/// Checks that `grads` holds a gradient for every parameter; names the ones that lack one.
pub fn check_all_have_grads<'a>(params: impl Iterator<Item = (&'a str, &'a Var)>, grads: &GradStore) -> Result<()> {
    let missing: Vec<&str> = params.filter(|(_, v)| grads.get(v.as_tensor()).is_none()).map(|(n, _)| n).collect();
    if !missing.is_empty() {
        bail!("{} parameters received no gradient: {}", missing.len(), missing.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_norm_sum_is_exact_enough_and_thread_independent() {
        let xs: Vec<f32> = (0..200_003).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let naive: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let got = sum_of_squares(&xs);
        assert!((got - naive).abs() <= 1e-12 * naive, "{got} vs {naive}");
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| sum_of_squares(&xs));
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| sum_of_squares(&xs));
        assert_eq!(one.to_bits(), three.to_bits());
        assert_eq!(one.to_bits(), got.to_bits());
    }

    #[test]
    fn linear_schedule_matches_transformers() {
        // get_linear_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10)
        let s = LinearSchedule { peak_lr: 1.0, warmup_steps: 2, total_steps: 10 };
        let got: Vec<f64> = (0..11).map(|i| s.lr(i)).collect();
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        let s = LinearSchedule { peak_lr: 2e-5, warmup_steps: 0, total_steps: 500 };
        assert_eq!(s.lr(0), 2e-5);
        assert!((s.lr(250) - 1e-5).abs() < 1e-18);
        assert_eq!(s.lr(500), 0.0);
    }

    #[test]
    fn weight_decay_groups() {
        assert!(decays("distilbert.transformer.layer.0.ffn.lin1.weight"));
        assert!(decays("distilbert.embeddings.word_embeddings.weight"));
        assert!(!decays("distilbert.transformer.layer.0.ffn.lin1.bias"));
        assert!(!decays("distilbert.transformer.layer.0.sa_layer_norm.weight"));
        assert!(!decays("bert.encoder.layer.0.output.LayerNorm.weight"));
        assert!(!decays("bert.embeddings.LayerNorm.bias"));
    }
}
