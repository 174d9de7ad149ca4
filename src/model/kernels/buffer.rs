//! What every kernel shares: the fixed work split (rows or elements per parallel chunk, never
//! per thread, so results do not depend on the thread count) and its view of candle's storage.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};
use std::mem::MaybeUninit;

/// Rows per parallel work item.
pub(crate) const ROWS_PER_CHUNK: usize = 16;
/// Elements per parallel work item for element-wise kernels.
pub(crate) const ELEMS_PER_CHUNK: usize = 1 << 14;

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { bail!("{what}: expected float32 input") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// Allocates `n` floats without zeroing them and lets `fill` write every one.
pub(crate) fn filled(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `fill` writes all `n` elements: a full element-wise map over its
    // input, or gemm calls with `accumulate = false` that together cover the whole output.
    unsafe { v.set_len(n) };
    v
}

/// An initialised slice seen as possibly-uninitialised (same layout), for writers that accept
/// both.
pub(crate) fn as_uninit(xs: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the writers only store
    // initialised values through it.
    unsafe { &mut *(xs as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Read access to the float32 CPU data of several contiguous tensors at once.
pub(crate) struct Slices<'a> {
    guards: Vec<(candle_core::StorageRef<'a>, &'a Layout)>,
}

impl<'a> Slices<'a> {
    pub(crate) fn new(ts: &'a [Tensor]) -> Slices<'a> {
        Slices { guards: ts.iter().map(|t| t.storage_and_layout()).collect() }
    }

    pub(crate) fn get(&self, i: usize) -> Result<&[f32]> {
        let (st, l) = &self.guards[i];
        match &**st {
            Storage::Cpu(c) => f32_slice(c, l, "kernel input"),
            _ => bail!("the fused kernels run on the CPU only"),
        }
    }
}
