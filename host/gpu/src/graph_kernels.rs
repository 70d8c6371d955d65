//! Wrappers of `kernels/graph_ops.cu`: the graph-IR ops the executor's GPU backend needs beyond
//! the model-math kernels of `kernels.rs` (activations, softcap, per-row broadcasts, column
//! views, output-row gathers, LayerNorm, L2 norm, pooling). Shapes are checked here as in
//! `kernels.rs`, so a safe caller cannot make a kernel read or write out of bounds.

use crate::device::{DeviceBuffer, Stream};
use crate::error::{GpuError, Result};
use crate::kernels::{grid_1d, need, Kernels};
use crate::module::KernelArgs;

/// Element-wise activations of `unary_f32` (codes shared with `graph_ops.cu`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Silu,
    Sigmoid,
    /// GELU, tanh approximation.
    Gelu,
    /// GELU with the exact erf.
    GeluErf,
    /// `cap * tanh(x / cap)`.
    Softcap(f32),
}

/// How `pool` reduces a sequence's token rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Mean,
    Cls,
    Last,
}

impl Kernels {
    /// `out = f(x)` element-wise (`out` may be a view of the same memory as `x`).
    pub fn unary(&self, s: &Stream, f: Unary, x: &DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>) -> Result<()> {
        need("unary", "out", out.len(), x.len())?;
        let (kind, p) = match f {
            Unary::Silu => (0, 0.0),
            Unary::Sigmoid => (1, 0.0),
            Unary::Gelu => (2, 0.0),
            Unary::GeluErf => (3, 0.0),
            Unary::Softcap(cap) => {
                if !(cap > 0.0) {
                    return Err(GpuError::shape("softcap", format!("cap {cap} must be positive")));
                }
                (4, cap)
            }
        };
        let mut a = KernelArgs::new();
        a.buf(x).buf(out).u64(x.len() as u64).i32(kind).f32(p);
        // SAFETY: both buffers hold x.len() values.
        unsafe { self.f("unary_f32")?.launch(s, (grid_1d(x.len(), 256), 1, 1), (256, 1, 1), 0, &mut a) }
    }

    /// `out[r, c] = a[r, c] (+ or *) b[r]`: `b` holds one value per row of `cols`.
    pub fn binary_rows(
        &self,
        s: &Stream,
        mul: bool,
        a: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
        cols: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "binary_rows";
        if cols == 0 || cols > i32::MAX as usize || !a.len().is_multiple_of(cols) {
            return Err(GpuError::shape(OP, format!("{} values are not rows of {cols}", a.len())));
        }
        need(OP, "b", b.len(), a.len() / cols)?;
        need(OP, "out", out.len(), a.len())?;
        let mut args = KernelArgs::new();
        args.buf(a).buf(b).buf(out).u64(a.len() as u64).i32(cols as i32).i32(mul as i32);
        // SAFETY: a and out hold rows * cols values, b rows values.
        unsafe { self.f("binary_row_f32")?.launch(s, (grid_1d(a.len(), 256), 1, 1), (256, 1, 1), 0, &mut args) }
    }

    /// Columns `[offset, offset + cols)` of every row of `x` (rows of `src_cols`), contiguous.
    pub fn copy_cols(
        &self,
        s: &Stream,
        x: &DeviceBuffer<f32>,
        src_cols: usize,
        offset: usize,
        cols: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "copy_cols";
        if src_cols == 0 || !x.len().is_multiple_of(src_cols) || offset + cols > src_cols || src_cols > i32::MAX as usize {
            return Err(GpuError::shape(OP, format!("columns [{offset}, {offset}+{cols}) of {} values in rows of {src_cols}", x.len())));
        }
        need(OP, "out", out.len(), x.len() / src_cols * cols)?;
        let mut a = KernelArgs::new();
        a.buf(x).buf(out).u64(out.len() as u64).i32(src_cols as i32).i32(offset as i32).i32(cols as i32);
        // SAFETY: every read x[r * src_cols + offset + c] with c < cols stays in row r (checked).
        unsafe { self.f("copy_cols_f32")?.launch(s, (grid_1d(out.len(), 256), 1, 1), (256, 1, 1), 0, &mut a) }
    }

    /// `out[i] = x[ids[i]]` for rows of `cols`, `ids` on the device (so a captured graph can
    /// replay it with new ids). An id past the rows of `x` gives a NaN row, never a stray read.
    pub fn gather_rows(
        &self,
        s: &Stream,
        x: &DeviceBuffer<f32>,
        cols: usize,
        ids: &DeviceBuffer<u32>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        if cols == 0 || cols > i32::MAX as usize || !x.len().is_multiple_of(cols) {
            return Err(GpuError::shape(OP, format!("{} values are not rows of {cols}", x.len())));
        }
        need(OP, "out", out.len(), ids.len() * cols)?;
        let mut a = KernelArgs::new();
        a.buf(x).buf(ids).buf(out).i32(cols as i32).u32((x.len() / cols).min(u32::MAX as usize) as u32);
        // SAFETY: out holds ids.len() rows; the kernel checks every id against x's rows.
        unsafe { self.f("gather_rows_f32")?.launch(s, (ids.len() as u32, cols.div_ceil(256) as u32, 1), (256, 1, 1), 0, &mut a) }
    }

    /// LayerNorm per row of `row_len` with optional weight and bias.
    pub fn layer_norm(
        &self,
        s: &Stream,
        x: &DeviceBuffer<f32>,
        w: Option<&DeviceBuffer<f32>>,
        b: Option<&DeviceBuffer<f32>>,
        eps: f32,
        row_len: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        if row_len == 0 || !x.len().is_multiple_of(row_len) {
            return Err(GpuError::shape(OP, format!("{} values are not rows of {row_len}", x.len())));
        }
        need(OP, "out", out.len(), x.len())?;
        for v in [w, b].into_iter().flatten() {
            need(OP, "weight/bias", v.len(), row_len)?;
        }
        let mut a = KernelArgs::new();
        a.buf(x).opt_buf(w).opt_buf(b).buf(out).i32(row_len as i32).f32(eps);
        // SAFETY: x and out hold rows * row_len values, w and b row_len (checked).
        unsafe { self.f("layer_norm_f32")?.launch(s, ((x.len() / row_len) as u32, 1, 1), (256, 1, 1), 0, &mut a) }
    }

    /// `out = x / max(||x||, eps)` per row of `row_len`.
    pub fn l2_norm(&self, s: &Stream, x: &DeviceBuffer<f32>, eps: f32, row_len: usize, out: &mut DeviceBuffer<f32>) -> Result<()> {
        const OP: &str = "l2_norm";
        if row_len == 0 || !x.len().is_multiple_of(row_len) {
            return Err(GpuError::shape(OP, format!("{} values are not rows of {row_len}", x.len())));
        }
        need(OP, "out", out.len(), x.len())?;
        let mut a = KernelArgs::new();
        a.buf(x).buf(out).i32(row_len as i32).f32(eps);
        // SAFETY: x and out hold rows * row_len values.
        unsafe { self.f("l2_norm_f32")?.launch(s, ((x.len() / row_len) as u32, 1, 1), (256, 1, 1), 0, &mut a) }
    }

    /// One row per sequence from its token rows of `x` (rows of `cols`): `seqs[i]` = (first row,
    /// rows), every sequence non-empty; the (start, len) pairs go through `meta` (at least
    /// `2 * seqs.len()` values).
    pub fn pool(
        &self,
        s: &Stream,
        mode: PoolMode,
        x: &DeviceBuffer<f32>,
        cols: usize,
        seqs: &[(usize, usize)],
        meta: &mut DeviceBuffer<i32>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "pool";
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(GpuError::shape(OP, format!("{} values are not rows of {cols}", x.len())));
        }
        let n_rows = x.len() / cols;
        if let Some((i, _)) = seqs.iter().enumerate().find(|(_, &(t0, n))| n == 0 || t0 + n > n_rows) {
            return Err(GpuError::shape(OP, format!("sequence {i} is empty or outside the {n_rows} rows")));
        }
        need(OP, "out", out.len(), seqs.len() * cols)?;
        if seqs.is_empty() {
            return Ok(());
        }
        if meta.len() < 2 * seqs.len() {
            return Err(GpuError::shape(OP, format!("{} sequences exceed the metadata buffer", seqs.len())));
        }
        let host: Vec<i32> = seqs.iter().map(|&(t0, _)| t0 as i32).chain(seqs.iter().map(|&(_, n)| n as i32)).collect();
        s.copy_to_device(&host, &mut *meta.view(0, host.len())?)?;
        let mode = match mode {
            PoolMode::Mean => 1,
            PoolMode::Cls => 2,
            PoolMode::Last => 3,
        };
        let mut a = KernelArgs::new();
        a.buf(x).ptr(meta.device_ptr()).ptr(meta.device_ptr() + 4 * seqs.len() as u64).buf(out).i32(cols as i32).i32(mode);
        // SAFETY: every sequence's rows lie inside x (checked); out holds one row per sequence.
        unsafe { self.f("pool_f32")?.launch(s, (seqs.len() as u32, cols.div_ceil(256) as u32, 1), (256, 1, 1), 0, &mut a) }
    }
}
