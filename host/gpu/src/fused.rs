//! Fused kernels of the decode path: an op whose output feeds quantized matrix products
//! quantizes it in the same launch (`kernels/ops.cu` rms_norm_q8_f32, glu_q8_f32), so the
//! products skip `quantize_q8`: one launch and one pass over the activations fewer per product
//! input (two per layer). The results are bit-identical to the unfused pair: the same
//! expressions on the same values.

use crate::device::{DeviceBuffer, Stream};
use crate::error::{GpuError, Result};
use crate::kernels::{grid_1d, need, Kernels, QuantActs};
use crate::module::KernelArgs;

/// The gated activation of [`Kernels::glu_q8`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glu {
    /// `silu(g) * u`
    Swi,
    /// `gelu_tanh(g) * u`
    Ge,
}

fn check_acts(op: &'static str, acts: &QuantActs, n: usize, row_len: usize) -> Result<()> {
    if row_len == 0 || !row_len.is_multiple_of(32) {
        return Err(GpuError::shape(op, format!("rows of {row_len} values: not a positive multiple of 32")));
    }
    if acts.qs.len() < n {
        return Err(GpuError::shape(op, format!("scratch holds {} values, need {n}", acts.qs.len())));
    }
    Ok(())
}

impl Kernels {
    /// [`Kernels::rms_norm`] that also quantizes `out` into `acts` as [`Kernels::quantize_q8`]
    /// would (rows of `row_len`, a multiple of 32).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_q8(
        &self,
        s: &Stream,
        x: &DeviceBuffer<f32>,
        w: Option<&DeviceBuffer<f32>>,
        eps: f32,
        row_len: usize,
        out: &mut DeviceBuffer<f32>,
        acts: &mut QuantActs,
    ) -> Result<()> {
        const OP: &str = "rms_norm_q8";
        check_acts(OP, acts, x.len(), row_len)?;
        if !x.len().is_multiple_of(row_len) {
            return Err(GpuError::shape(OP, format!("{} values are not rows of {row_len}", x.len())));
        }
        need(OP, "out", out.len(), x.len())?;
        if let Some(w) = w {
            need(OP, "weight", w.len(), row_len)?;
        }
        let mut a = KernelArgs::new();
        a.buf(x).opt_buf(w).buf(out).i32(row_len as i32).f32(eps).buf(&acts.qs).buf(&acts.d).buf(&acts.s);
        // SAFETY: x and out hold rows * row_len values, w row_len, the scratch at least x.len()
        // int8 values and x.len() / 32 scales (checked).
        unsafe { self.f("rms_norm_q8_f32")?.launch(s, ((x.len() / row_len) as u32, 1, 1), (256, 1, 1), 0, &mut a) }
    }

    /// `out = act(gate) * up`, also quantized into `acts` (rows of `row_len`, a multiple of 32).
    pub fn glu_q8(
        &self,
        s: &Stream,
        act: Glu,
        gate: &DeviceBuffer<f32>,
        up: &DeviceBuffer<f32>,
        row_len: usize,
        out: &mut DeviceBuffer<f32>,
        acts: &mut QuantActs,
    ) -> Result<()> {
        const OP: &str = "glu_q8";
        check_acts(OP, acts, gate.len(), row_len)?;
        need(OP, "up", up.len(), gate.len())?;
        need(OP, "out", out.len(), gate.len())?;
        let n_blocks = gate.len() / 32;
        let mut a = KernelArgs::new();
        a.buf(gate).buf(up).buf(out).i32(if act == Glu::Swi { 0 } else { 1 }).buf(&acts.qs).buf(&acts.d).buf(&acts.s);
        a.u64(n_blocks as u64);
        // SAFETY: gate, up and out hold n_blocks * 32 values; the scratch at least as many
        // (checked).
        unsafe { self.f("glu_q8_f32")?.launch(s, (grid_1d(n_blocks, 128), 1, 1), (128, 1, 1), 0, &mut a) }
    }
}
