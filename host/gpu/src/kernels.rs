//! The kernels of `kernels/`, compiled for one device and launched through typed, shape-checked
//! wrappers.
//!
//! The sources are embedded with `include_str!` (so the binary needs no kernel files at run time)
//! and compiled on first use by NVRTC / hipRTC for the device's arch, with the warp size the
//! device reports passed as `-DRF_WARP_SIZE` (kernels take it as a template argument), through
//! the disk cache of `rtc.rs`. Every wrapper checks buffer lengths against the shapes it is given
//! before launching, so a safe caller cannot make a kernel read or write out of bounds; the one
//! exception is data-dependent indices produced on the device (token ids, block tables), which
//! the kernels clamp or mark (see each wrapper).

use std::collections::HashMap;

use rocmforge_quant::GgmlType;

use crate::api::Vendor;
use crate::device::{Device, DeviceBuffer, Stream};
use crate::error::{GpuError, Result};
use crate::module::{Function, KernelArgs, Module};
use crate::repack;
use crate::rtc::{self, KernelSource, Target};

/// The kernel sources, as embedded in the binary: (program name, source).
pub const SOURCES: &[(&str, &str)] = &[
    ("ops", include_str!("../../../kernels/ops.cu")),
    ("mmv", include_str!("../../../kernels/mmv.cu")),
    ("attention", include_str!("../../../kernels/attention.cu")),
    ("graph_ops", include_str!("../../../kernels/graph_ops.cu")),
    ("dequant", include_str!("../../../kernels/dequant.cu")),
];
/// Headers the sources include by name.
pub const HEADERS: &[(&str, &str)] = &[("compat.h", include_str!("../../../kernels/compat.h"))];

/// Default rows per block of the matrix-vector kernels (one warp per row).
const MMV_ROWS_PER_BLOCK: u32 = 4;
/// Largest token batch one matrix-vector launch takes (the kernels' NT).
pub const MMV_MAX_TOKENS: usize = 8;

/// Compiler options for a device: the warp size and the vendor's language flags.
pub fn compile_options(vendor: Vendor, warp_size: u32) -> Vec<String> {
    let mut o = vec![format!("-DRF_WARP_SIZE={warp_size}")];
    match vendor {
        Vendor::Cuda => o.push("-std=c++17".into()),
        Vendor::Hip => o.push("-O3".into()),
    }
    o
}

/// Compile every kernel source for (`vendor`, `arch`, `warp_size`) without a device or cache:
/// the compile-only check CI can run with just the compiler library (`check_kernels` example).
pub fn compile_all(vendor: Vendor, arch: &str, warp_size: u32) -> Result<Vec<(String, usize)>> {
    let api = rtc::rtc(vendor)?;
    let t = Target { vendor, arch, driver_version: 0, options: compile_options(vendor, warp_size) };
    let mut out = Vec::new();
    for (name, source) in SOURCES {
        let code = rtc::compile_uncached(api, &KernelSource { name, source, headers: HEADERS }, &t)?;
        out.push((name.to_string(), code.len()));
    }
    Ok(out)
}

/// Compile one extra kernel source (it may `#include "compat.h"`) for `dev`, with the options
/// the built-in kernels get, bypassing the disk cache: for kernels that are not part of
/// `kernels/`, such as the tests' fault-injection kernel. Load the result with
/// [`Module::load`].
pub fn compile_source(dev: &Device, name: &str, source: &str) -> Result<Vec<u8>> {
    let info = dev.info();
    let api = rtc::rtc(info.vendor)?;
    let t = Target {
        vendor: info.vendor,
        arch: &info.arch,
        driver_version: info.driver_version,
        options: compile_options(info.vendor, info.warp_size),
    };
    rtc::compile_uncached(api, &KernelSource { name, source, headers: HEADERS }, &t)
}

/// Where the compiler library came from (for logs).
pub fn compiler_library(vendor: Vendor) -> Result<String> {
    Ok(rtc::rtc(vendor)?.lib_path.clone())
}

/// RoPE configuration (`ggml_rope_ext`'s scalar parameters; freq_factors go as a buffer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub n_rot: usize,
    pub neox: bool,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub n_ctx_orig: usize,
}

impl Default for RopeConfig {
    fn default() -> Self {
        RopeConfig {
            n_rot: 0,
            neox: false,
            freq_base: 10000.0,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 0,
        }
    }
}

/// ggml's `ggml_rope_yarn_corr_dims` (the host half of YaRN).
pub fn rope_yarn_corr_dims(n_dims: usize, n_ctx_orig: usize, freq_base: f32, beta_fast: f32, beta_slow: f32) -> [f32; 2] {
    let corr_dim = |n_rot: f32| n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * freq_base.ln());
    [corr_dim(beta_fast).floor().max(0.0), corr_dim(beta_slow).ceil().min(n_dims as f32 - 1.0)]
}

/// A weight matrix on the device, repacked for the matrix-vector kernels.
pub struct GpuMatrix {
    pub ty: GgmlType,
    pub n_rows: usize,
    pub k: usize,
    pub data: DeviceBuffer<u8>,
}

impl GpuMatrix {
    /// Repack the GGUF bytes of an `n_rows` x `k` matrix and upload them.
    pub fn upload(dev: &Device, ty: GgmlType, gguf: &[u8], n_rows: usize, k: usize) -> Result<GpuMatrix> {
        let packed = repack::repack(ty, gguf, n_rows, k)?;
        Ok(GpuMatrix { ty, n_rows, k, data: dev.upload(&packed)? })
    }
    /// Weight bytes (what one product streams).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
    /// True when products with this matrix take activations quantized to int8 (every quantized
    /// type); false for the float types (F16, BF16, F32), which read f32 activations.
    pub fn quantized_input(&self) -> bool {
        !repack::takes_f32_input(self.ty)
    }
}

/// Scratch for activations quantized to int8 (see `kernels/ops.cu` quantize_q8_f32).
pub struct QuantActs {
    pub(crate) qs: DeviceBuffer<i8>,
    pub(crate) d: DeviceBuffer<f32>,
    pub(crate) s: DeviceBuffer<f32>,
}

impl QuantActs {
    /// Room for `max_values` activations (n_tokens x k, k a multiple of 32).
    pub fn new(dev: &Device, max_values: usize) -> Result<QuantActs> {
        let n = max_values.div_ceil(32) * 32;
        Ok(QuantActs { qs: dev.alloc(n)?, d: dev.alloc(n / 32)?, s: dev.alloc(n / 32)? })
    }
}

/// Activations of a matrix-vector product: int8 (quantized weights) or f32 (F16, BF16, F32).
#[derive(Clone, Copy)]
enum MmvInput<'a> {
    Q8(&'a QuantActs),
    F32(&'a DeviceBuffer<f32>),
}

/// All kernels, loaded on one device.
pub struct Kernels {
    dev: Device,
    warp: u32,
    mmv_rows: u32,
    funcs: HashMap<String, Function>,
}

pub(crate) fn grid_1d(n: usize, block: usize) -> u32 {
    n.div_ceil(block).clamp(1, 65535 * 16) as u32
}

pub(crate) fn need(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(GpuError::shape(op, format!("{what} has {got} values, expected {want}")));
    }
    Ok(())
}

impl Kernels {
    /// Compile (or load from the cache) and load every kernel for `dev`.
    pub fn new(dev: &Device) -> Result<Kernels> {
        Self::with_options(dev, &[])
    }

    /// [`Kernels::new`] with extra compiler options (tuning defines such as `-DRF_MMV_UNROLL=1`).
    pub fn with_options(dev: &Device, extra: &[&str]) -> Result<Kernels> {
        let info = dev.info();
        let mut options = compile_options(info.vendor, info.warp_size);
        options.extend(extra.iter().map(|s| s.to_string()));
        let target = Target { vendor: info.vendor, arch: &info.arch, driver_version: info.driver_version, options };
        let mut funcs = HashMap::new();
        for (name, source) in SOURCES {
            let code = rtc::compile(&KernelSource { name, source, headers: HEADERS }, &target)?;
            let module = Module::load(dev, &code)?;
            for entry in entry_points(source) {
                let f = module.function(&entry)?;
                funcs.insert(entry, f);
            }
        }
        Ok(Kernels { dev: dev.clone(), warp: info.warp_size, mmv_rows: MMV_ROWS_PER_BLOCK, funcs })
    }

    /// Rows (warps) per block of the matrix-vector kernels (a tuning knob; default 4).
    pub fn set_mmv_rows_per_block(&mut self, rows: u32) -> Result<()> {
        if rows == 0 || rows * self.warp > 1024 {
            return Err(GpuError::shape("set_mmv_rows_per_block", format!("{rows} rows of {} threads", self.warp)));
        }
        self.mmv_rows = rows;
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The device's warp size (the kernels' `RF_WARP_SIZE`).
    pub(crate) fn warp(&self) -> u32 {
        self.warp
    }

    pub(crate) fn f(&self, name: &str) -> Result<&Function> {
        self.funcs.get(name).ok_or_else(|| GpuError::shape("kernels", format!("no kernel named {name}")))
    }

    /// RMS norm per row of `row_len`: `out = x / sqrt(mean(x^2) + eps) * w`.
    pub fn rms_norm(
        &self,
        s: &Stream,
        x: &DeviceBuffer<f32>,
        w: Option<&DeviceBuffer<f32>>,
        eps: f32,
        row_len: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        if row_len == 0 || !x.len().is_multiple_of(row_len) {
            return Err(GpuError::shape(OP, format!("{} values are not rows of {row_len}", x.len())));
        }
        need(OP, "out", out.len(), x.len())?;
        if let Some(w) = w {
            need(OP, "weight", w.len(), row_len)?;
        }
        let mut a = KernelArgs::new();
        a.buf(x).opt_buf(w).buf(out).i32(row_len as i32).f32(eps);
        // SAFETY: lengths checked above: rows * row_len values in x and out, row_len in w.
        unsafe { self.f("rms_norm_f32")?.launch(s, ((x.len() / row_len) as u32, 1, 1), (256, 1, 1), 0, &mut a) }
    }

    /// Rotate `x` (`n_tokens x n_head x head_dim`) in place; token t is at `positions[t]`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        s: &Stream,
        x: &mut DeviceBuffer<f32>,
        n_tokens: usize,
        n_head: usize,
        head_dim: usize,
        positions: &DeviceBuffer<i32>,
        p: &RopeConfig,
        freq_factors: Option<&DeviceBuffer<f32>>,
    ) -> Result<()> {
        let src = x.device_ptr();
        self.rope_launch(s, src, x, n_tokens, n_head, head_dim, positions, p, freq_factors)
    }

    /// [`Kernels::rope`] reading `src` and writing `out` (same shape; one launch, no copy).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_into(
        &self,
        s: &Stream,
        src: &DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
        n_tokens: usize,
        n_head: usize,
        head_dim: usize,
        positions: &DeviceBuffer<i32>,
        p: &RopeConfig,
        freq_factors: Option<&DeviceBuffer<f32>>,
    ) -> Result<()> {
        need("rope", "src", src.len(), out.len())?;
        self.rope_launch(s, src.device_ptr(), out, n_tokens, n_head, head_dim, positions, p, freq_factors)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_launch(
        &self,
        s: &Stream,
        src: u64,
        x: &mut DeviceBuffer<f32>,
        n_tokens: usize,
        n_head: usize,
        head_dim: usize,
        positions: &DeviceBuffer<i32>,
        p: &RopeConfig,
        freq_factors: Option<&DeviceBuffer<f32>>,
    ) -> Result<()> {
        const OP: &str = "rope";
        if p.n_rot == 0 || !p.n_rot.is_multiple_of(2) || p.n_rot > head_dim {
            return Err(GpuError::shape(OP, format!("n_rot {} must be even, positive and <= head_dim {head_dim}", p.n_rot)));
        }
        need(OP, "x", x.len(), n_tokens * n_head * head_dim)?;
        if positions.len() < n_tokens {
            return Err(GpuError::shape(OP, format!("{} positions for {n_tokens} tokens", positions.len())));
        }
        if let Some(f) = freq_factors {
            need(OP, "freq_factors", f.len(), p.n_rot / 2)?;
        }
        let corr = rope_yarn_corr_dims(p.n_rot, p.n_ctx_orig, p.freq_base, p.beta_fast, p.beta_slow);
        let mut a = KernelArgs::new();
        a.ptr(src).buf(x).buf(positions).i32(n_head as i32).i32(head_dim as i32).i32(p.n_rot as i32).i32(p.neox as i32);
        a.f32(p.freq_base).f32(p.freq_scale).f32(p.ext_factor).f32(p.attn_factor).f32(corr[0]).f32(corr[1]).opt_buf(freq_factors);
        let threads = ((p.n_rot / 2).div_ceil(self.warp as usize) * self.warp as usize).min(256) as u32;
        // SAFETY: x (and src, which the callers give x's length) holds n_tokens x n_head x
        // head_dim values, positions >= n_tokens, freq_factors n_rot / 2 (checked).
        unsafe { self.f("rope_f32")?.launch(s, (n_head as u32, n_tokens as u32, 1), (threads, 1, 1), 0, &mut a) }
    }

    fn elementwise3(
        &self,
        name: &str,
        op: &'static str,
        s: &Stream,
        a: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        need(op, "second input", b.len(), a.len())?;
        need(op, "out", out.len(), a.len())?;
        let mut args = KernelArgs::new();
        args.buf(a).buf(b).buf(out).u64(a.len() as u64);
        // SAFETY: all three buffers hold a.len() values.
        unsafe { self.f(name)?.launch(s, (grid_1d(a.len(), 256), 1, 1), (256, 1, 1), 0, &mut args) }
    }

    /// `out = silu(gate) * up`.
    pub fn swiglu(&self, s: &Stream, gate: &DeviceBuffer<f32>, up: &DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>) -> Result<()> {
        self.elementwise3("swiglu_f32", "swiglu", s, gate, up, out)
    }

    /// `out = gelu_tanh(gate) * up`.
    pub fn geglu(&self, s: &Stream, gate: &DeviceBuffer<f32>, up: &DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>) -> Result<()> {
        self.elementwise3("geglu_f32", "geglu", s, gate, up, out)
    }

    fn binary(
        &self,
        name: &str,
        op: &'static str,
        s: &Stream,
        a: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        if b.is_empty() || !a.len().is_multiple_of(b.len()) {
            return Err(GpuError::shape(op, format!("b ({}) must divide a ({})", b.len(), a.len())));
        }
        need(op, "out", out.len(), a.len())?;
        let mut args = KernelArgs::new();
        args.buf(a).buf(b).buf(out).u64(a.len() as u64).u64(b.len() as u64);
        // SAFETY: out and a hold n values, b nb values with nb | n.
        unsafe { self.f(name)?.launch(s, (grid_1d(a.len(), 256), 1, 1), (256, 1, 1), 0, &mut args) }
    }

    /// `out = a + b`, `b` broadcast over rows when it is shorter.
    pub fn add(&self, s: &Stream, a: &DeviceBuffer<f32>, b: &DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>) -> Result<()> {
        self.binary("add_f32", "add", s, a, b, out)
    }

    /// `out = a * b`, `b` broadcast over rows when it is shorter.
    pub fn mul(&self, s: &Stream, a: &DeviceBuffer<f32>, b: &DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>) -> Result<()> {
        self.binary("mul_f32", "mul", s, a, b, out)
    }

    /// `out = x * v`.
    pub fn scale(&self, s: &Stream, x: &DeviceBuffer<f32>, v: f32, out: &mut DeviceBuffer<f32>) -> Result<()> {
        need("scale", "out", out.len(), x.len())?;
        let mut args = KernelArgs::new();
        args.buf(x).buf(out).u64(x.len() as u64).f32(v);
        // SAFETY: both buffers hold x.len() values.
        unsafe { self.f("scale_f32")?.launch(s, (grid_1d(x.len(), 256), 1, 1), (256, 1, 1), 0, &mut args) }
    }

    /// Index of the largest value of each of `n_rows` rows (lowest index on ties; NaN never
    /// wins; u32::MAX for a row without a number).
    pub fn argmax(&self, s: &Stream, x: &DeviceBuffer<f32>, n_rows: usize, out: &mut DeviceBuffer<u32>) -> Result<()> {
        if n_rows == 0 || !x.len().is_multiple_of(n_rows) {
            return Err(GpuError::shape("argmax", format!("{} values are not {n_rows} rows", x.len())));
        }
        need("argmax", "out", out.len(), n_rows)?;
        let mut args = KernelArgs::new();
        args.buf(x).buf(out).i32((x.len() / n_rows) as i32);
        // SAFETY: x holds n_rows rows, out n_rows values.
        unsafe { self.f("argmax_f32")?.launch(s, (n_rows as u32, 1, 1), (1024, 1, 1), 0, &mut args) }
    }

    /// Embedding rows: `out[i]` = row `ids[i]` of `table` (GGUF layout, `ty`, rows of
    /// `row_len`), as f32. Ids past the table (only possible when produced on the device) give
    /// NaN rows.
    pub fn get_rows(
        &self,
        s: &Stream,
        ty: GgmlType,
        table: &DeviceBuffer<u8>,
        row_len: usize,
        ids: &DeviceBuffer<u32>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "get_rows";
        let name = match ty {
            GgmlType::F32 => "get_rows_f32",
            GgmlType::F16 => "get_rows_f16",
            GgmlType::Q4_0 => "get_rows_q4_0",
            GgmlType::Q4_1 => "get_rows_q4_1",
            GgmlType::BF16 => "get_rows_bf16",
            GgmlType::Q5_0 => "get_rows_q5_0",
            GgmlType::Q5_1 => "get_rows_q5_1",
            GgmlType::Q8_0 => "get_rows_q8_0",
            GgmlType::IQ4_NL => "get_rows_iq4_nl",
            GgmlType::Q4_K => "get_rows_q4_k",
            GgmlType::Q5_K => "get_rows_q5_k",
            GgmlType::Q6_K => "get_rows_q6_k",
            GgmlType::IQ4_XS => "get_rows_iq4_xs",
            _ => return Err(GpuError::Unsupported { op: OP, ty: ty.name() }),
        };
        if row_len == 0 || !row_len.is_multiple_of(ty.block_size()) {
            return Err(GpuError::shape(OP, format!("row_len {row_len} is not a multiple of {}", ty.block_size())));
        }
        let row_bytes = row_len / ty.block_size() * ty.type_size();
        if !table.len().is_multiple_of(row_bytes) {
            return Err(GpuError::shape(OP, format!("table of {} bytes is not rows of {row_bytes}", table.len())));
        }
        need(OP, "out", out.len(), ids.len() * row_len)?;
        let n_rows = (table.len() / row_bytes) as u32;
        let mut a = KernelArgs::new();
        a.buf(table).buf(ids).buf(out).i32(row_len as i32).u64(row_bytes as u64).u32(n_rows);
        // SAFETY: out holds ids x row_len values; the kernel checks every id against n_rows.
        unsafe { self.f(name)?.launch(s, (ids.len() as u32, row_len.div_ceil(256) as u32, 1), (256, 1, 1), 0, &mut a) }
    }

    /// Quantize `n_tokens` rows of `k` activations into `acts` (int8 per 32 values).
    pub fn quantize_q8(&self, s: &Stream, x: &DeviceBuffer<f32>, n_tokens: usize, k: usize, acts: &mut QuantActs) -> Result<()> {
        const OP: &str = "quantize_q8";
        if !k.is_multiple_of(32) {
            return Err(GpuError::shape(OP, format!("k = {k} is not a multiple of 32")));
        }
        need(OP, "x", x.len(), n_tokens * k)?;
        if acts.qs.len() < n_tokens * k {
            return Err(GpuError::shape(OP, format!("scratch holds {} values, need {}", acts.qs.len(), n_tokens * k)));
        }
        let n_blocks = n_tokens * k / 32;
        let mut a = KernelArgs::new();
        a.buf(x).buf(&acts.qs).buf(&acts.d).buf(&acts.s).u64(n_blocks as u64);
        // SAFETY: x holds n_blocks * 32 values; the scratch at least as many (checked).
        unsafe { self.f("quantize_q8_f32")?.launch(s, (grid_1d(n_blocks, 128), 1, 1), (128, 1, 1), 0, &mut a) }
    }

    /// `y[t * n_rows + r] = sum_k W[r, k] x[t, k]` for `n_tokens` tokens (any number; launched
    /// in groups of up to 8). Quantized weights first quantize `x` into `acts`.
    pub fn matmul(
        &self,
        s: &Stream,
        w: &GpuMatrix,
        x: &DeviceBuffer<f32>,
        n_tokens: usize,
        acts: &mut QuantActs,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        need("matmul", "x", x.len(), n_tokens * w.k)?;
        if !w.quantized_input() {
            return self.mmv(s, w, MmvInput::F32(x), n_tokens, y);
        }
        self.quantize_q8(s, x, n_tokens, w.k, acts)?;
        self.mmv(s, w, MmvInput::Q8(acts), n_tokens, y)
    }

    /// [`Kernels::matmul`] on activations already in `acts` (quantized once by
    /// [`Kernels::quantize_q8`] for several matrices, such as Q, K and V). Quantized types only.
    pub fn matmul_quantized(&self, s: &Stream, w: &GpuMatrix, acts: &QuantActs, n_tokens: usize, y: &mut DeviceBuffer<f32>) -> Result<()> {
        if !w.quantized_input() {
            return Err(GpuError::shape("matmul_quantized", format!("{} weights take f32 activations: use matmul", w.ty.name())));
        }
        if acts.qs.len() < n_tokens * w.k {
            return Err(GpuError::shape("matmul_quantized", format!("scratch holds {} values, need {}", acts.qs.len(), n_tokens * w.k)));
        }
        self.mmv(s, w, MmvInput::Q8(acts), n_tokens, y)
    }

    /// [`Kernels::matmul_quantized`] for two or three matrices of one quantized type and one
    /// `k` (Q/K/V, gate/up) in one launch per token group.
    pub fn matmul_quantized_multi(
        &self,
        s: &Stream,
        ws: &[&GpuMatrix],
        acts: &QuantActs,
        n_tokens: usize,
        ys: &mut [&mut DeviceBuffer<f32>],
    ) -> Result<()> {
        const OP: &str = "matmul_multi";
        if !(2..=3).contains(&ws.len()) || ys.len() != ws.len() {
            return Err(GpuError::shape(OP, format!("{} matrices and {} outputs (2 or 3 each)", ws.len(), ys.len())));
        }
        let (ty, k) = (ws[0].ty, ws[0].k);
        if !ws[0].quantized_input() || ws.iter().any(|w| w.ty != ty || w.k != k) {
            return Err(GpuError::shape(OP, "the matrices must share one quantized type and k"));
        }
        if acts.qs.len() < n_tokens * k {
            return Err(GpuError::shape(OP, format!("scratch holds {} values, need {}", acts.qs.len(), n_tokens * k)));
        }
        for (w, y) in ws.iter().zip(ys.iter()) {
            need(OP, "y", y.len(), n_tokens * w.n_rows)?;
            repack::check_packed(OP, w.ty, w.data.len(), w.n_rows, w.k)?;
        }
        let prefix = format!("mmv3_{}", mmv_suffix(ty).ok_or(GpuError::Unsupported { op: OP, ty: ty.name() })?);
        let n: Vec<usize> = (0..3).map(|i| ws.get(i).map_or(0, |w| w.n_rows)).collect();
        let total: usize = n.iter().sum();
        let grid = (total.div_ceil(self.mmv_rows as usize) as u32, 1, 1);
        let block = (self.mmv_rows * self.warp, 1, 1);
        let mut t0 = 0;
        while t0 < n_tokens {
            let nt = (n_tokens - t0).min(MMV_MAX_TOKENS);
            let variant = [1, 2, 4, 8].into_iter().find(|&v| v >= nt).unwrap_or(8);
            let f = self.f(&format!("{prefix}_{variant}"))?;
            let mut a = KernelArgs::new();
            for i in 0..3 {
                a.ptr(ws.get(i).map_or(0, |w| w.data.device_ptr()));
            }
            a.ptr(acts.qs.device_ptr() + (t0 * k) as u64)
                .ptr(acts.d.device_ptr() + (t0 * k / 32 * 4) as u64)
                .ptr(acts.s.device_ptr() + (t0 * k / 32 * 4) as u64);
            for i in 0..3 {
                a.ptr(ys.get(i).map_or(0, |y| y.device_ptr() + (t0 * n[i] * 4) as u64));
            }
            a.i32(n[0] as i32).i32(n[1] as i32).i32(n[2] as i32).i32(k as i32).i32(nt as i32);
            // SAFETY: every matrix was checked for its n_rows x k; tokens t0..t0+nt of the
            // activations and of every output exist (checked); warps past n0 + n1 + n2 rows
            // return before touching memory (n2 = 0 for two matrices, whose null pointers are
            // never read).
            unsafe { f.launch(s, grid, block, 0, &mut a)? };
            t0 += nt;
        }
        Ok(())
    }

    fn mmv(&self, s: &Stream, w: &GpuMatrix, x: MmvInput<'_>, n_tokens: usize, y: &mut DeviceBuffer<f32>) -> Result<()> {
        const OP: &str = "matmul";
        need(OP, "y", y.len(), n_tokens * w.n_rows)?;
        repack::check_packed(OP, w.ty, w.data.len(), w.n_rows, w.k)?;
        let prefix = format!("mmv_{}", mmv_suffix(w.ty).ok_or(GpuError::Unsupported { op: OP, ty: w.ty.name() })?);
        if matches!(x, MmvInput::Q8(_)) == !w.quantized_input() {
            return Err(GpuError::shape(OP, format!("{} weights given the wrong kind of activations", w.ty.name())));
        }
        let (n_rows, k) = (w.n_rows, w.k);
        let grid = (n_rows.div_ceil(self.mmv_rows as usize) as u32, 1, 1);
        let block = (self.mmv_rows * self.warp, 1, 1);
        let mut t0 = 0;
        while t0 < n_tokens {
            let nt = (n_tokens - t0).min(MMV_MAX_TOKENS);
            let variant = [1, 2, 4, 8].into_iter().find(|&v| v >= nt).unwrap_or(8);
            let f = self.f(&format!("{prefix}_{variant}"))?;
            let mut a = KernelArgs::new();
            a.buf(&w.data);
            match x {
                MmvInput::Q8(acts) => {
                    a.ptr(acts.qs.device_ptr() + (t0 * k) as u64)
                        .ptr(acts.d.device_ptr() + (t0 * k / 32 * 4) as u64)
                        .ptr(acts.s.device_ptr() + (t0 * k / 32 * 4) as u64);
                }
                MmvInput::F32(x) => {
                    a.ptr(x.device_ptr() + (t0 * k * 4) as u64);
                }
            }
            a.ptr(y.device_ptr() + (t0 * n_rows * 4) as u64).i32(n_rows as i32).i32(k as i32).i32(nt as i32);
            // SAFETY: the weights were checked for n_rows x k of their type; tokens t0..t0+nt
            // of the activations (checked by the callers) and of y (checked above) exist.
            unsafe { f.launch(s, grid, block, 0, &mut a)? };
            t0 += nt;
        }
        Ok(())
    }
}

/// The kernel-name suffix of a weight type in `kernels/mmv.cu` (`mmv_<suffix>_<NT>`).
fn mmv_suffix(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::IQ4_NL => "iq4_nl",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q5_K => "q5_k",
        GgmlType::Q6_K => "q6_k",
        GgmlType::IQ4_XS => "iq4_xs",
        GgmlType::F16 => "f16",
        GgmlType::BF16 => "bf16",
        GgmlType::F32 => "f32",
        _ => return None,
    })
}

/// The `extern "C" __global__` entry points of a source, including those its macros generate
/// (`MMV_ENTRIES(q4_0)` -> mmv_q4_0_{1,2,4,8}, `GET_ROWS(name, ..)`).
fn entry_points(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let l = line.trim();
        if l.ends_with('\\') {
            continue; // a macro body (its parameters are not entry points)
        }
        if let Some(rest) = l.strip_prefix("extern \"C\" __global__ void ") {
            if let Some(name) = rest.split('(').next() {
                let name = name.trim();
                if !name.contains("##") && !name.is_empty() {
                    out.push(name.to_string());
                }
            }
        } else if let Some(rest) = l.strip_prefix("MMV_ENTRIES(") {
            let ty = rest.trim_end_matches(')');
            out.extend([1, 2, 4, 8].map(|n| format!("mmv_{ty}_{n}")));
            out.extend([1, 2, 4, 8].map(|n| format!("mmv3_{ty}_{n}")));
        } else if let Some(rest) = l.strip_prefix("MMV_FLOAT_ENTRIES(") {
            let ty = rest.trim_end_matches(')');
            out.extend([1, 2, 4, 8].map(|n| format!("mmv_{ty}_{n}")));
        } else if let Some(rest) = l.strip_prefix("GET_ROWS(") {
            if let Some(name) = rest.split(',').next() {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_cover_every_kernel() {
        let all: Vec<String> = SOURCES.iter().flat_map(|(_, s)| entry_points(s)).collect();
        for name in [
            "rms_norm_f32",
            "rope_f32",
            "swiglu_f32",
            "argmax_f32",
            "get_rows_q4_k",
            "quantize_q8_f32",
            "kv_write_f16",
            "kv_write_q8_0",
            "kv_write_fp8",
            "mmv_q4_0_1",
            "mmv_q6_k_8",
            "mmv_f16_4",
            "mmv_bf16_8",
            "mmv_f32_1",
            "mmv_q5_1_2",
            "mmv3_q5_k_4",
            "mmv_iq4_nl_1",
            "mmv3_iq4_xs_8",
            "dequant_q5_k_f16",
            "dequant_iq4_xs_f16",
            "dequant_bf16_f16",
            "get_rows_q5_k",
            "get_rows_iq4_xs",
            "get_rows_bf16",
            "paged_attention_f16",
            "paged_attention_q8_0",
            "paged_attention_fp8",
            "paged_attention_reduce",
        ] {
            assert!(all.iter().any(|n| n == name), "{name} missing from {all:?}");
        }
        assert!(!all.iter().any(|n| n == "name"), "macro parameter taken for a kernel: {all:?}");
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "duplicate entry points");
    }

    #[test]
    fn every_supported_weight_type_has_its_kernels() {
        let all: Vec<String> = SOURCES.iter().flat_map(|(_, s)| entry_points(s)).collect();
        let has = |n: &str| all.iter().any(|e| e == n);
        for ty in GgmlType::ALL.iter().copied().filter(|&t| repack::supports_mmv(t)) {
            let sfx = mmv_suffix(ty).unwrap_or_else(|| panic!("{} has no mmv kernel name", ty.name()));
            for nt in [1, 2, 4, 8] {
                assert!(has(&format!("mmv_{sfx}_{nt}")), "mmv_{sfx}_{nt}");
                // Quantized types also take the multi-matrix launch (float types never do).
                assert_eq!(has(&format!("mmv3_{sfx}_{nt}")), !repack::takes_f32_input(ty), "mmv3_{sfx}_{nt}");
            }
            if ty != GgmlType::F16 {
                let (name, _) = crate::gemm::dequant_kernel(ty).unwrap_or_else(|| panic!("{} has no dequant kernel", ty.name()));
                assert!(has(name), "{name}");
            }
        }
    }

    #[test]
    fn yarn_corr_dims_match_ggml_shape() {
        let c = rope_yarn_corr_dims(128, 4096, 10000.0, 32.0, 1.0);
        assert!(c[0] >= 0.0 && c[1] <= 127.0 && c[0] < c[1], "{c:?}");
    }
}
