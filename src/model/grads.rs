//! Parameter gradients handed over outside candle's graph.
//!
//! candle's autograd gives every input of a node a zero-filled gradient and then adds the node's
//! contribution to it: for a 30,522 × 768 embedding table that is two extra passes over 94 MB
//! per step, for a fused encoder layer ten nodes' worth of fresh activations. The fused nodes
//! ([`super::layer`], [`super::kernels::embedding`]) instead leave their parameters' gradients
//! here, on the thread that runs the backward pass, and [`backward`] adds them to the
//! `GradStore` that `loss.backward()` returns. Always take gradients through [`backward`]: a
//! bare `loss.backward()` misses them.

use candle_core::Tensor;
use std::cell::RefCell;

thread_local! {
    /// `(parameter, gradient)` pairs left by the fused nodes' backward passes.
    static PENDING: RefCell<Vec<(Tensor, Tensor)>> = const { RefCell::new(Vec::new()) };
}

/// Leaves `(parameter, gradient)` pairs for [`backward`] (called from a node's backward).
pub(crate) fn leave(pairs: impl IntoIterator<Item = (Tensor, Tensor)>) {
    PENDING.with(|p| p.borrow_mut().extend(pairs));
}

fn take_pending() -> Vec<(Tensor, Tensor)> {
    PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// The gradients of `loss` with respect to every parameter: `loss.backward()` plus the
/// parameter gradients the fused nodes hand over outside candle's graph.
/// Use this, never a bare `loss.backward()`, to train the models of this module.
pub fn backward(loss: &Tensor) -> anyhow::Result<candle_core::backprop::GradStore> {
    // Anything left by an earlier bare `backward()` on this thread is stale.
    drop(take_pending());
    let mut grads = loss.backward()?;
    for (param, g) in take_pending() {
        let total = match grads.remove(&param) {
            Some(earlier) => (earlier + g)?,
            None => g,
        };
        grads.insert(&param, total);
    }
    Ok(grads)
}
