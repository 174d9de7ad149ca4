//! What the forward pass computes in, per thread, as `torch.autocast` does it: a guard that
//! lives for the duration of a forward (and its backward) and is dropped after.
//!
//! - [`autocast`]`(Some(BF16))`: the matmuls (every linear layer and attention's two) run in
//!   bf16 on bf16 copies of their f32 inputs and weights, and hand back f32; parameters,
//!   optimiser state, softmax, LayerNorm, GELU and the loss stay f32. Gradients flow back
//!   through the casts, so the master weights receive f32 gradients.
//! - [`cpu_bf16`]: on a CPU with AMX (or AVX-512 BF16), the fused kernels stay on and their
//!   linear layers' products (forward and backward) run in bf16 on AMX tiles (or `vdpbf16ps`
//!   on the tiles' layout); [`enter`] picks this or autocast
//!   for a model's device.
//! - [`composed_ops`]: the fused f32 CPU kernels are switched off and every layer runs as
//!   candle's primitive ops, the path a GPU takes. Tests use it to check that path on the CPU
//!   against PyTorch's numbers, where no GPU is at hand.
//!
//! Per thread and scoped, because tests run side by side in one process and a server's worker
//! thread sets its own.

use candle_core::DType;
use std::cell::Cell;

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
    static COMPOSED: Cell<bool> = const { Cell::new(false) };
    static CPU_BF16: Cell<bool> = const { Cell::new(false) };
    static PATHS: Cell<PathsTaken> = const { Cell::new(PathsTaken { fused: 0, composed: 0 }) };
}

/// Restores the previous setting when dropped.
#[must_use = "the setting lasts as long as the guard"]
pub struct Guard {
    autocast: Option<DType>,
    composed: bool,
    cpu_bf16: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.autocast));
        COMPOSED.with(|c| c.set(self.composed));
        CPU_BF16.with(|c| c.set(self.cpu_bf16));
    }
}

fn guard() -> Guard {
    Guard { autocast: AUTOCAST.with(Cell::get), composed: COMPOSED.with(Cell::get), cpu_bf16: CPU_BF16.with(Cell::get) }
}

/// The precision a model runs in on `device`: on a CPU with a bf16 engine (AMX or AVX-512 BF16),
/// bf16 means the fused kernels' projections on it ([`cpu_bf16`]); anywhere else, [`autocast`].
pub fn enter(dtype: Option<DType>, device: &candle_core::Device) -> Guard {
    if dtype == Some(DType::BF16) && device.is_cpu() && super::kernels::amx::available() {
        let g = guard();
        CPU_BF16.with(|c| c.set(true));
        return g;
    }
    autocast(dtype)
}

/// The fused CPU kernels' linear layers (forward and backward products) in bf16 on the engine,
/// f32 sums, on this thread while the guard lives (set `on` false to force f32). A fused op
/// reads this when it is built and keeps it for its backward.
pub fn cpu_bf16(on: bool) -> Guard {
    let g = guard();
    CPU_BF16.with(|c| c.set(on && super::kernels::amx::available()));
    g
}

/// Whether [`cpu_bf16`] is on for this thread.
pub fn cpu_bf16_on() -> bool {
    CPU_BF16.with(Cell::get)
}

/// Matmuls in `dtype` (None: as their inputs) on this thread while the guard lives.
pub fn autocast(dtype: Option<DType>) -> Guard {
    let g = guard();
    AUTOCAST.with(|a| a.set(dtype));
    g
}

/// The composed (device-generic) layers instead of the fused CPU kernels, on this thread while
/// the guard lives.
pub fn composed_ops() -> Guard {
    let g = guard();
    COMPOSED.with(|c| c.set(true));
    g
}

/// The dtype matmuls run in on this thread, if autocast is on.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// How many times, on this thread, an op chose the fused CPU kernels and how many times the
/// composed ops: tests assert that the path a guard promises is the one that ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathsTaken {
    pub fused: u64,
    pub composed: u64,
}

/// The counts since the last call (or since the thread started), which this resets to zero.
pub fn take_paths() -> PathsTaken {
    PATHS.with(|p| p.replace(PathsTaken::default()))
}

/// Counts one choice of path for [`take_paths`] and returns it.
pub(crate) fn record_path(fused: bool) -> bool {
    PATHS.with(|p| {
        let mut t = p.get();
        if fused {
            t.fused += 1
        } else {
            t.composed += 1
        }
        p.set(t)
    });
    fused
}

/// False while [`composed_ops`] or [`autocast`] is on: the fused kernels are f32 only.
pub fn fused_allowed() -> bool {
    !COMPOSED.with(Cell::get) && AUTOCAST.with(Cell::get).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        assert!(fused_allowed());
        {
            let _a = autocast(Some(DType::BF16));
            assert_eq!(autocast_dtype(), Some(DType::BF16));
            assert!(!fused_allowed());
            {
                let _c = composed_ops();
                let _off = autocast(None);
                assert_eq!(autocast_dtype(), None);
                assert!(!fused_allowed());
            }
            assert_eq!(autocast_dtype(), Some(DType::BF16));
        }
        assert!(fused_allowed() && autocast_dtype().is_none());
        {
            let _b = cpu_bf16(true);
            // only where a bf16 engine runs; the fused kernels stay on either way
            assert_eq!(cpu_bf16_on(), crate::model::kernels::amx::available());
            assert!(fused_allowed());
            let _off = cpu_bf16(false);
            assert!(!cpu_bf16_on());
        }
        assert!(!cpu_bf16_on());
        // Per thread: another thread sees the defaults.
        let _a = autocast(Some(DType::BF16));
        assert!(std::thread::spawn(fused_allowed).join().unwrap());
    }
}
