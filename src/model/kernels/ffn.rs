//! The encoder layer's feed-forward block, `o = GELU(h W1ᵀ + b1) W2ᵀ + b2`, forward and backward:
//! fused on AMX tiles under `precision::cpu_bf16` or with AMX-prepared weights ([`amx_ffn`]),
//! otherwise as products and a GELU pass (float32, or the prepared panels and int8 forms).

use super::amx::AmxLinear;
use super::amx_ffn;
use super::buffer::{as_uninit, filled};
use super::gelu::{gelu_backward_in_place, gelu_in_place, gelu_into};
use super::linear::{column_sums, matmul_into, weight_grad_into};
use super::prepared::{project, Prepared};
use super::profile;

/// The block's parameters: `W1 [ffn, d]`, `b1`, `W2 [d, ffn]`, `b2`, and the two projections'
/// forms prepared for inference, if any.
pub(crate) struct Weights<'a> {
    pub w1: &'a [f32],
    pub b1: &'a [f32],
    pub w2: &'a [f32],
    pub b2: &'a [f32],
    pub prepared: [Option<&'a Prepared>; 2],
}

/// What the backward pass needs from the forward.
pub(crate) enum Saved {
    /// The pre-activation and the activation.
    Passes {
        f: Vec<f32>,
        g: Vec<f32>,
    },
    Amx(amx_ffn::Saved),
}

/// The block's parameter gradients.
pub(crate) type Grads = amx_ffn::Grads;

/// `o [m, d]` for `h [m, d]`, and what the backward needs when `keep`; in bf16 on AMX when
/// `bf16` (the caller's `precision::cpu_bf16`).
pub(crate) fn forward(
    h: &[f32],
    w: &Weights,
    (m, d, ffn): (usize, usize, usize),
    (keep, bf16): (bool, bool),
    section: &mut profile::Sections,
) -> (Vec<f32>, Option<Saved>) {
    section.start("· feed-forward");
    if let [Some(Prepared::Amx(ff1)), Some(Prepared::Amx(ff2))] = w.prepared {
        let h = AmxLinear::pack_input(h, m);
        return (filled(m * d, |o| amx_ffn::infer(&h, ff1, ff2, o)), None);
    }
    if bf16 {
        let (o, saved) = amx_ffn::forward(h, (w.w1, w.b1), (w.w2, w.b2), (m, d, ffn), keep);
        return (o, saved.map(Saved::Amx));
    }
    let mut f = project(h, (m, d), &[(w.w1, w.b1, w.prepared[0])]);
    section.start("· GELU");
    let g = match keep {
        true => filled(m * ffn, |o| gelu_into(&f, o)),
        false => {
            gelu_in_place(&mut f);
            std::mem::take(&mut f)
        }
    };
    section.start("· feed-forward 2");
    let o = project(&g, (m, ffn), &[(w.w2, w.b2, w.prepared[1])]);
    (o, keep.then_some(Saved::Passes { f, g }))
}

/// The backward pass for `d_o [m, d]`: the parameters' gradients (when `param_grads`), and
/// `dh` with the gradient of the block's input `h` added to it (`h` as the forward saw it).
pub(crate) fn backward(
    d_o: &[f32],
    saved: &Saved,
    w: &Weights,
    (h, dh): (&[f32], &mut [f32]),
    (m, d, ffn): (usize, usize, usize),
    param_grads: bool,
    section: &mut profile::Sections,
) -> Option<Grads> {
    let (f, g) = match saved {
        Saved::Amx(saved) => {
            section.start("· feed-forward backward");
            // the fused AMX backward makes the weight gradients alongside the input's
            let (grads, input) = amx_ffn::backward(d_o, saved, (w.w1, w.w2), h, (m, d, ffn));
            input.add_to(dh);
            return param_grads.then_some(grads);
        }
        Saved::Passes { f, g } => (f, g),
    };
    // o = g W2ᵀ + b2
    section.start("· feed-forward 2 backward");
    let mut dg = filled(m * ffn, |o| matmul_into(o, false, (m, ffn, d), d_o, (d, 1), w.w2, (ffn, 1)));
    let w2 = param_grads.then(|| filled(d * ffn, |o| weight_grad_into(o, d_o, d, g, (m, d, ffn))));
    // g = GELU(f), in place: dg becomes df
    section.start("· GELU backward");
    gelu_backward_in_place(f, &mut dg);
    // f = h W1ᵀ + b1
    section.start("· feed-forward 1 backward");
    matmul_into(as_uninit(dh), true, (m, d, ffn), &dg, (ffn, 1), w.w1, (d, 1));
    let w2 = w2?;
    let w1 = filled(ffn * d, |o| weight_grad_into(o, &dg, ffn, h, (m, ffn, d)));
    Some(Grads { w1, b1: column_sums(&dg, ffn, m, ffn), w2, b2: column_sums(d_o, d, m, d) })
}
