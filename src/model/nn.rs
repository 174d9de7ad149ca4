//! The layers the encoders share (linear, LayerNorm, embeddings, self-attention, dropout,
//! activations).
//!
//! Every operation is differentiable with candle's autograd. On the CPU in float32 each layer
//! runs as a fused kernel of [`super::kernels`]; elsewhere it is composed from candle's
//! primitive ops, with LayerNorm and softmax written out (candle-nn's fused versions record no
//! backward op). The composed forms are also the reference the kernels are tested against.

use super::kernels;
use super::kernels::prepared::Prepared;
use super::precision;
use crate::weights::{Init, Quantize, WeightLoader};
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::sync::Arc;

/// Dropout state: `eval()` turns dropout off; `train(seed)` draws masks from a seeded ChaCha8
/// stream, so a run is reproducible bit for bit.
pub struct Dropout {
    pub(super) rng: Option<RefCell<ChaCha8Rng>>,
    /// False under [`Dropout::inference`]: the fused layers keep nothing for a backward pass.
    pub(super) keep_for_backward: bool,
}

impl Dropout {
    /// Dropout off; gradients can still be taken (as `model.eval()` in PyTorch).
    pub fn eval() -> Dropout {
        Dropout { rng: None, keep_for_backward: true }
    }

    /// Dropout off and no backward pass possible (as `torch.inference_mode()`): the fused
    /// encoder layers neither keep their activations nor allocate a separate GELU output. For
    /// prediction and evaluation.
    pub fn inference() -> Dropout {
        Dropout { rng: None, keep_for_backward: false }
    }

    pub fn train(seed: u64) -> Dropout {
        Dropout { rng: Some(RefCell::new(ChaCha8Rng::seed_from_u64(seed))), keep_for_backward: true }
    }

    /// Inverted dropout as in `torch.nn.Dropout`: zero with probability `p`, scale the rest
    /// by `1 / (1 - p)`.
    pub fn apply(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        let Some(rng) = &self.rng else {
            return Ok(x.clone());
        };
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if kernels::applies(x) {
            return Ok(kernels::dropout(x, p, &mut rng.borrow_mut())?);
        }
        if !x.device().is_cpu() {
            // Drawn on the device: drawing ~30M mask values per step on the host and copying
            // them over would take longer than the step. Seeded from this dropout's stream, so
            // a run, and a resumed one, draws the same masks.
            x.device().set_seed(rng.borrow_mut().next_u64())?;
            return device_dropout(x, p);
        }
        let (keep, scale) = kernels::keep_mask(x.elem_count(), p, &mut rng.borrow_mut());
        let mask: Vec<f32> = keep.into_iter().map(|k| if k { scale } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }

    /// The position in the random stream (for checkpoints).
    pub fn state(&self) -> Option<ChaCha8Rng> {
        self.rng.as_ref().map(|r| r.borrow().clone())
    }

    pub fn from_state(rng: ChaCha8Rng) -> Dropout {
        Dropout { rng: Some(RefCell::new(rng)), keep_for_backward: true }
    }
}

/// Inverted dropout with the mask drawn by the tensor's device (its generator seeded by the
/// caller): keep where a uniform draw is at least `p`, scale by `1 / (1 - p)`.
fn device_dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    let u = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
    let keep = (u.ge(p)?.to_dtype(x.dtype())? * (1.0 / (1.0 - p)))?;
    Ok(x.mul(&keep)?)
}

/// The activation of the feed-forward blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x * Φ(x)` with erf (Transformers' `"gelu"`).
    Gelu,
    /// The tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    Relu,
}

impl Activation {
    /// Reads Transformers' name for an activation, found in config field `field`.
    pub fn parse(name: &str, field: &str) -> Result<Activation> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => anyhow::bail!("config.json: unsupported {field} {other:?} (supported: gelu, gelu_new, relu)"),
        })
    }
}

/// `y = x Wᵀ + b`, with `W` stored `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    /// The weight prepared for inference (float32 panels; bf16 panels with `--dtype bf16`; int8
    /// with `--quantize int8`), when the model was loaded for inference on the CPU.
    pub prepared: Option<Arc<Prepared>>,
}

impl Linear {
    /// An encoder layer's projection: prepared for inference when the loader says so.
    pub fn load(wl: &mut WeightLoader, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let mut l = Self::load_init(wl, name, d_in, d_out, Init::Required, Init::Required)?;
        let cpu = l.weight.device().is_cpu() && l.weight.dtype() == DType::F32;
        l.prepared = match (wl.quantize(), wl.inference()) {
            (Some(Quantize::Int8), _) if cpu => Some(Prepared::int8(&l.weight, &l.bias)?),
            (Some(Quantize::Bf16), _) if cpu && kernels::amx::available() => Some(Prepared::bf16(&l.weight, &l.bias)?),
            (Some(q), _) if cpu => anyhow::bail!("{}: this CPU cannot run it", q.flag()),
            (Some(q), _) => anyhow::bail!("{} runs on the CPU only: add --device cpu", q.flag()),
            (None, true) if cpu => Some(Prepared::f32(&l.weight, &l.bias)?),
            (None, _) => None,
        }
        .map(Arc::new);
        Ok(l)
    }

    /// A task-head layer: `N(0, std)` weight and zero bias when the checkpoint lacks it.
    pub fn load_head(wl: &mut WeightLoader, name: &str, d_in: usize, d_out: usize, std: f64) -> Result<Linear> {
        Self::load_init(wl, name, d_in, d_out, Init::Normal(std), Init::Zeros)
    }

    fn load_init(wl: &mut WeightLoader, name: &str, d_in: usize, d_out: usize, wi: Init, bi: Init) -> Result<Linear> {
        let weight = wl.param(&format!("{name}.weight"), &[d_out, d_in], wi)?;
        let bias = wl.param(&format!("{name}.bias"), &[d_out], bi)?;
        Ok(Linear { weight, bias, prepared: None })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // the prepared form has no backward pass: it runs only where no gradient is tracked
        if let (Some(p), true) = (&self.prepared, kernels::applies(x) && !x.track_op()) {
            return Ok(p.forward(x)?);
        }
        if kernels::applies(x) {
            return Ok(kernels::linear(x, &self.weight, &self.bias)?);
        }
        self.forward_composed(x)
    }

    /// The same from candle's primitive ops (other devices, and the kernels' reference).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims.last().expect("non-scalar input");
        let rows = x.elem_count() / d_in;
        let y = matmul(&x.reshape((rows, d_in))?, &self.weight.t()?)?.broadcast_add(&self.bias)?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-scalar input") = self.bias.dims()[0];
        Ok(y.reshape(out_dims)?)
    }
}

/// LayerNorm over the last dimension, written with differentiable primitives.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(wl: &mut WeightLoader, name: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        let weight = wl.param(&format!("{name}.weight"), &[dim], Init::Required)?;
        let bias = wl.param(&format!("{name}.bias"), &[dim], Init::Required)?;
        Ok(LayerNorm { weight, bias, eps })
    }

    /// `LayerNorm(dropout(h) + residual)`, the end of every residual block.
    pub fn forward_residual(&self, h: &Tensor, residual: &Tensor, drop: &Dropout, p: f64) -> Result<Tensor> {
        if kernels::applies(h) {
            let dropout = match &drop.rng {
                Some(rng) if p > 0.0 => Some((p, &mut *rng.borrow_mut())),
                _ => None,
            };
            return Ok(kernels::add_layer_norm(h, residual, &self.weight, &self.bias, self.eps, dropout)?);
        }
        self.forward(&(drop.apply(h, p)? + residual)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::applies(x) {
            return Ok(kernels::layer_norm(x, &self.weight, &self.bias, self.eps)?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// An embedding table `[num, dim]`.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn load(wl: &mut WeightLoader, name: &str, num: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding { weight: wl.param(&format!("{name}.weight"), &[num, dim], Init::Required)? })
    }

    /// `ids` of any shape → `ids.shape + [dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        if kernels::applies(&self.weight) {
            return Ok(kernels::embedding(&self.weight, ids)?);
        }
        let mut dims = ids.dims().to_vec();
        dims.push(self.weight.dims()[1]);
        Ok(self.weight.index_select(&ids.flatten_all()?, 0)?.reshape(dims)?)
    }
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu if kernels::applies(x) => kernels::gelu_erf(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// `a · b`, in [`precision::autocast`]'s dtype when it is on (the product handed back in
/// `a`'s dtype, as torch.autocast's matmuls feed the f32 ops after them).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match precision::autocast_dtype() {
        Some(dt) if a.dtype() != dt => Ok(a.to_dtype(dt)?.matmul(&b.to_dtype(dt)?)?.to_dtype(a.dtype())?),
        _ => Ok(a.matmul(b)?),
    }
}

/// Softmax over the last dimension (max-shifted; the shift is detached, as it cancels).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// The additive attention bias `[batch, 1, 1, seq]`: 0 where attended, the lowest float where
/// masked (as Transformers' `finfo.min`).
pub fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * -(f32::MIN as f64))?;
    Ok(bias.reshape((b, 1, 1, s))?)
}

/// Multi-head self-attention with separate q/k/v/output projections (both BERT and DistilBERT).
#[derive(Debug, Clone)]
pub struct SelfAttention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub n_heads: usize,
    pub dropout: f64,
}

impl SelfAttention {
    /// `x [b, s, d]`, `bias [b, 1, 1, s]` → the projected context `[b, s, d]`.
    pub fn forward(&self, x: &Tensor, bias: &Tensor, drop: &Dropout) -> Result<Tensor> {
        if kernels::applies(x) {
            // One projection for q, k and v: [b, s, 3d].
            let w = Tensor::cat(&[&self.q.weight, &self.k.weight, &self.v.weight], 0)?;
            let bqkv = Tensor::cat(&[&self.q.bias, &self.k.bias, &self.v.bias], 0)?;
            let qkv = kernels::linear(x, &w, &bqkv)?;
            let ctx = match &drop.rng {
                Some(rng) => kernels::attention(&qkv, bias, self.n_heads, Some((self.dropout, &mut rng.borrow_mut())))?,
                None => kernels::attention(&qkv, bias, self.n_heads, None)?,
            };
            return self.out.forward(&ctx);
        }
        let (b, s, d) = x.dims3()?;
        let h = self.n_heads;
        let dh = d / h;
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((b, s, h, dh))?.transpose(1, 2)?.contiguous()?) };
        let q = split((self.q.forward(x)? / (dh as f64).sqrt())?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let probs = softmax_last_dim(&matmul(&q, &k.t()?)?.broadcast_add(bias)?)?;
        let probs = drop.apply(&probs, self.dropout)?;
        let ctx = matmul(&probs, &v)?.transpose(1, 2)?.contiguous()?.reshape((b, s, d))?;
        self.out.forward(&ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dropout_is_seeded_inverted_and_off_in_eval() {
        let x = Tensor::ones((200, 100), DType::F32, &Device::Cpu).unwrap();
        let a: Vec<f32> = Dropout::train(1).apply(&x, 0.1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = Dropout::train(1).apply(&x, 0.1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let c: Vec<f32> = Dropout::train(2).apply(&x, 0.1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((zeros - 0.1).abs() < 0.01, "dropped fraction {zeros}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let e: Vec<f32> = Dropout::eval().apply(&x, 0.1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(e.iter().all(|&v| v == 1.0));
    }

    /// The GPU's dropout (run here on CPU tensors: the same ops): drops about `p`, scales the
    /// rest exactly, and its gradient is the mask.
    #[test]
    fn device_drawn_dropout_drops_p_and_scales_the_rest() {
        let x = candle_core::Var::from_tensor(&Tensor::ones((400, 250), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let y = device_dropout(x.as_tensor(), 0.1).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let dropped = v.iter().filter(|&&a| a == 0.0).count() as f64 / v.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped fraction {dropped}");
        assert!(v.iter().all(|&a| a == 0.0 || a == 1.0 / 0.9f32), "kept values scaled by 1/(1-p)");
        let g: Vec<f32> = y
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, v, "d(sum y)/dx is the scaled mask");
    }

    #[test]
    fn layer_norm_and_softmax_are_differentiable() {
        use candle_core::Var;
        let x = Var::from_tensor(&Tensor::new(&[[1.0f32, 2.0, 4.0], [0.5, -1.0, 3.0]], &Device::Cpu).unwrap()).unwrap();
        let ln = LayerNorm {
            weight: Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap(),
            bias: Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
            eps: 1e-12,
        };
        let y = softmax_last_dim(&ln.forward(x.as_tensor()).unwrap()).unwrap();
        let loss = y.narrow(1, 0, 1).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(x.as_tensor()).expect("x must receive a gradient");
        assert!(max_abs(gx) > 1e-3);
        // Central differences agree with the analytic gradient.
        let base: Vec<Vec<f32>> = x.as_tensor().to_vec2().unwrap();
        let gx: Vec<Vec<f32>> = gx.to_vec2().unwrap();
        let f = |v: &Vec<Vec<f32>>| -> f32 {
            let t = Tensor::new(v.clone(), &Device::Cpu).unwrap();
            softmax_last_dim(&ln.forward(&t).unwrap())
                .unwrap()
                .narrow(1, 0, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        for i in 0..2 {
            for j in 0..3 {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[i][j] += 1e-2;
                m[i][j] -= 1e-2;
                let num = (f(&p) - f(&m)) / 2e-2;
                assert!((num - gx[i][j]).abs() < 2e-3, "d/dx[{i}][{j}]: numeric {num}, analytic {}", gx[i][j]);
            }
        }
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }
}
