//! A linear layer's weight prepared once at load for inference: float32 panels (`panels.rs`),
//! bf16 packed for the bf16 engine (`amx.rs`: AMX tiles, or `vdpbf16ps` on the same layout) for
//! `--dtype bf16`, or int8 (`qlinear.rs`, `--quantize int8`). Forward only: a prepared copy does not follow the optimizer, so only models loaded for inference carry one, and a backward pass through it
//! fails loudly instead of stopping the gradient.

use super::amx::AmxLinear;
use super::buffer::{f32_slice, filled};
use super::linear::linear_into;
use super::panels::PanelLinear;
use super::qlinear::{QuantizedLinear, QuantizedRows};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Arc;

#[derive(Debug)]
pub enum Prepared {
    F32(PanelLinear),
    /// bf16 on the CPU's bf16 engine (`--dtype bf16`: AMX tiles, or `vdpbf16ps` on AMD).
    Amx(AmxLinear),
    Int8(QuantizedLinear),
}

impl Prepared {
    /// Float32 panels of the `[n, k]` weight and `[n]` bias tensors (on the CPU).
    pub fn f32(weight: &Tensor, bias: &Tensor) -> anyhow::Result<Prepared> {
        let (w, b, nk) = host(weight, bias)?;
        Ok(Prepared::F32(PanelLinear::new(&w, &b, nk)))
    }

    /// The bf16 form, for the CPU's bf16 engine (AMX tiles, or AVX-512 BF16 on AMD; it must have
    /// one, [`super::amx::available`]).
    pub fn bf16(weight: &Tensor, bias: &Tensor) -> anyhow::Result<Prepared> {
        let (w, b, nk) = host(weight, bias)?;
        Ok(Prepared::Amx(AmxLinear::new(&w, &b, nk)))
    }

    /// Int8 weights per output channel.
    pub fn int8(weight: &Tensor, bias: &Tensor) -> anyhow::Result<Prepared> {
        let (w, b, nk) = host(weight, bias)?;
        Ok(Prepared::Int8(QuantizedLinear::new(&w, &b, nk)))
    }

    pub fn in_features(&self) -> usize {
        match self {
            Prepared::F32(l) => l.in_features(),
            Prepared::Amx(l) => l.in_features(),
            Prepared::Int8(l) => l.in_features(),
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Prepared::F32(l) => l.out_features(),
            Prepared::Amx(l) => l.out_features(),
            Prepared::Int8(l) => l.out_features(),
        }
    }

    /// `x Wᵀ + b` over the last dimension of the f32 CPU tensor `x` (no backward).
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        // tracked, so that a backward pass through it fails loudly instead of stopping the gradient
        x.contiguous()?.apply_op1(PreparedOp(self.clone()))
    }
}

/// The instructions `--dtype bf16` runs on here: AMX tiles where the CPU has them, else, on
/// AMD, AVX-512 BF16.
pub fn bf16_kernel_name() -> &'static str {
    super::amx::name()
}

/// A weight and bias as f32 host vectors, with the weight's `(n, k)`.
type HostLinear = (Vec<f32>, Vec<f32>, (usize, usize));

/// A `[n, k]` weight and `[n]` bias as f32 host vectors, with `(n, k)`.
fn host(weight: &Tensor, bias: &Tensor) -> anyhow::Result<HostLinear> {
    let (n, k) = weight.dims2()?;
    let w: Vec<f32> = weight.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = bias.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    if b.len() != n {
        anyhow::bail!("a bias of {} values for a weight of shape [{n}, {k}]", b.len());
    }
    Ok((w, b, (n, k)))
}

/// One linear layer of [`project`]: weight `[n, k]`, bias `[n]`, and its prepared form if any.
pub(crate) type Projection<'a> = (&'a [f32], &'a [f32], Option<&'a Prepared>);

/// `x Wᵀ + b` of `x [m, k]` by each of `layers`, side by side in one `[m, Σ n]` output: by the
/// prepared form where a layer has one (int8 activations quantised, or bf16 ones packed, once
/// for all of them), by gemm otherwise, and by gemm for float32 from
/// [`super::panels::gemm_rows`] rows on (so a large batch is never slower than the training
/// forward).
pub(crate) fn project(x: &[f32], (m, k): (usize, usize), layers: &[Projection]) -> Vec<f32> {
    let total: usize = layers.iter().map(|l| l.1.len()).sum();
    let int8 = layers.iter().any(|l| matches!(l.2, Some(Prepared::Int8(_))));
    let rows = int8.then(|| QuantizedRows::new(x, (m, k)));
    let amx = layers.iter().any(|l| matches!(l.2, Some(Prepared::Amx(_))));
    let tiles = amx.then(|| AmxLinear::pack_input(x, m));
    filled(m * total, |out| {
        let mut offset = 0;
        for &(w, b, prepared) in layers {
            let n = b.len();
            let dst = &mut out[offset..];
            match (prepared, &rows) {
                (Some(Prepared::Int8(q)), Some(rows)) => q.forward_into(rows, dst, total),
                (Some(Prepared::F32(p)), _) if m < super::panels::gemm_rows() => p.forward_into(x, m, dst, total),
                (Some(Prepared::Amx(p)), _) => p.forward_packed(tiles.as_ref().expect("packed above"), dst, total),
                _ => linear_into(dst, total, x, w, b, (m, n, k)),
            }
            offset += n;
        }
    })
}

struct PreparedOp(Arc<Prepared>);

impl CustomOp1 for PreparedOp {
    fn name(&self) -> &'static str {
        match *self.0 {
            Prepared::F32(_) => "emotune-panel-linear",
            Prepared::Amx(_) => "emotune-amx-linear",
            Prepared::Int8(_) => "emotune-int8-linear",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (n, k) = (self.0.out_features(), self.0.in_features());
        let dims = l.dims();
        if dims.last() != Some(&k) {
            bail!("{}: input {dims:?} against weight [{n}, {k}]", self.name());
        }
        let m = x.len() / k.max(1);
        let y = filled(m * n, |y| match &*self.0 {
            Prepared::F32(p) => p.forward_into(x, m, y, n),
            Prepared::Amx(p) => p.forward_into(x, m, y, n),
            Prepared::Int8(q) => q.forward_into(&QuantizedRows::new(x, (m, k)), y, n),
        });
        let mut out = dims.to_vec();
        *out.last_mut().expect("checked above") = n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}
