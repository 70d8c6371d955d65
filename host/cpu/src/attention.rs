//! Paged KV cache memory and attention over it.
//!
//! The cache holds, per layer, `n_blocks` blocks of `block_size` token slots; a sequence reaches
//! its tokens through a block table (position p lives in block `block_table[p / block_size]`,
//! slot `p % block_size`), so blocks may be scattered anywhere in the pool (vLLM's PagedAttention
//! layout). K and V are stored as f16 by default, as llama.cpp's default cache type does; a cache
//! made with [`KvCache::with_type`] stores q8_0 or fp8 E4M3 rows instead, and attention over it
//! runs in `kv_quant.rs` (its header states those numerics). What follows is the f16 path.
//!
//! ```text
//!   k[layer][block][slot][head_kv][head_dim_k]   (f16 bits; quantized: `row_bytes(head_dim_k)` bytes per row)
//!   v[layer][block][slot][head_kv][head_dim_v]
//! ```
//!
//! Attention computes, for query token t at position `pos_start + t` and head h (KV head
//! `h / (n_head / n_head_kv)`), `softmax(scale * q.k_p)` over the allowed keys p (causal:
//! p <= q_pos; sliding window w: p > q_pos - w; optional tanh softcap on the logits; optional
//! attention sink: one more logit per head in the denominator only) and the weighted sum of v_p. Work is split over (token, head) rows pulled in small chunks by the
//! threads.
//!
//! Numerics are those of llama.cpp's non-flash CPU attention with an f16 cache, bit for bit:
//! - q is rounded to f16 (the `vec_dot_type` of the F16 cache in `kq = mul_mat(k, q)`); the
//!   softmax probabilities are rounded to f16 for `kqv = mul_mat(v, kq)`.
//! - each f16 dot product (exact f32 products) is summed in the order of the kernel llama.cpp
//!   runs: one token (`ggml_vec_dot_f16`, AVX-512): four 16-lane accumulators over steps of 64,
//!   folded (a0 + a2) + (a1 + a3), then the 16-lane fold of `_mm512_reduce_add_ps`; more tokens
//!   (llamafile tinyBLAS): one 16-lane accumulator over steps of 16, then the same 16-lane fold.
//!   Lanes are aligned on key position 0 (llama.cpp's cache cells of the sequence).
//! - softmax as `ggml_compute_forward_soft_max_f32`: scores times the scale, max, `ggml_v_expf`
//!   (its polynomial, reproduced with `mul_add`) per 16 key positions, each block's 16-lane sum
//!   added in f64, then the probabilities times `(float)(1.0 / sum)`.
//!
//! One portable body (`mul_add` is a correctly rounded fma everywhere) is compiled for AVX2 and
//! the baseline, and an AVX-512 twin (`attn_row_512`) performs the same operations, so every path
//! gives the same bits (the tests compare them).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::CpuError;
use crate::kv_quant::{self, KvCacheType, KvHeadScales};
use crate::pool::ThreadPool;
use crate::qmatmul::SyncPtr;
use crate::simd::{self, f16_bits_to_f32, Isa};

/// Paged K/V storage for all layers of one model (f16, q8_0 or fp8; see [`KvCacheType`]).
pub struct KvCache {
    n_layer: usize,
    n_head_kv: usize,
    head_dim_k: usize,
    head_dim_v: usize,
    block_size: usize,
    n_blocks: usize,
    ty: KvCacheType,
    /// f16 caches: the elements; empty otherwise.
    k: Vec<u16>,
    v: Vec<u16>,
    /// Quantized caches: rows of `ty.row_bytes(head_dim)` bytes; empty for f16.
    kq: Vec<u8>,
    vq: Vec<u8>,
    /// fp8: the scales of calls that give none (stored value = x / scale); 1.0 uncalibrated,
    /// as vLLM. A layer's own scales come with each call (`write_scaled`, `attention_with_scales`).
    scales: KvHeadScales,
    /// V is the first `head_dim_v` columns of each K row: no V rows are stored (MLA's latent
    /// cache, see [`KvCache::with_v_in_k`]).
    v_in_k: bool,
}

/// Options of [`attention`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttnParams {
    /// Logit scale; `None` = `1 / sqrt(head_dim_k)`.
    pub scale: Option<f32>,
    /// Causal mask (decoder models); `false` lets every query see all cached keys of the sequence.
    pub causal: bool,
    /// Sliding window: only keys with `pos > q_pos - window` (and, non-causal, `< q_pos + window`).
    pub sliding_window: Option<usize>,
    /// Logit soft-cap: `cap * tanh(logit / cap)` after scaling.
    pub softcap: Option<f32>,
    /// Attention sinks (gpt-oss): one logit per query head (`n_head` values) that joins the
    /// softmax's denominator only, as llama.cpp's `ggml_soft_max_add_sinks`: the max becomes
    /// `max(max, sink)` and the sum gains `expf(sink - max)`; no value row is attached to it.
    pub sinks: Option<Vec<f32>>,
}

/// Key positions `lo..hi` a query at `q_pos` may attend to in a sequence of `seq_len` cached
/// tokens: causal (up to itself) or all, narrowed by the sliding window.
pub(crate) fn key_range(params: &AttnParams, q_pos: usize, seq_len: usize) -> (usize, usize) {
    let mut lo = 0;
    let mut hi = if params.causal { q_pos + 1 } else { seq_len };
    if let Some(w) = params.sliding_window {
        lo = (q_pos + 1).saturating_sub(w);
        if !params.causal {
            hi = hi.min(q_pos + w);
        }
    }
    (lo, hi)
}

/// The query rows of one attention call: token t, head h reads
/// `q[(t * n_head + h) * dk..][..dk]`, attends with KV head `h / group` over [`key_range`], and
/// writes `out[(t * n_head + h) * dv..][..dv]`. Shared by the f16 and the quantized caches.
pub(crate) struct QueryRows<'a> {
    pub q: &'a [f32],
    pub n_tokens: usize,
    pub n_head: usize,
    pub group: usize,
    pub dk: usize,
    pub dv: usize,
    pub pos_start: usize,
    pub params: &'a AttnParams,
}

impl QueryRows<'_> {
    /// Run `row(scratch, kv_head, sink, q_row, lo, hi, out_row)` for every (token, head) on the
    /// pool's threads, pulled in small chunks; each thread keeps one `B` scratch. `sink` is the
    /// head's attention-sink logit, if any. `out` must hold n_tokens x n_head x dv values and
    /// `params.sinks` (if set) n_head values (checked by the callers).
    #[allow(clippy::type_complexity)]
    pub fn run<B: Default>(
        &self,
        pool: &ThreadPool,
        out: &mut [f32],
        row: impl Fn(&mut B, usize, Option<f32>, &[f32], usize, usize, &mut [f32]) + Sync,
    ) {
        let (n_head, dk, dv) = (self.n_head, self.dk, self.dv);
        debug_assert!(out.len() >= self.n_tokens * n_head * dv);
        let seq_len = self.pos_start + self.n_tokens;
        let n_items = self.n_tokens * n_head;
        // Items are (token, head) rows; a handful per claim keeps the counter cheap.
        let chunk = (n_items / (pool.n_threads() * 8)).clamp(1, 16);
        let n_chunks = n_items.div_ceil(chunk);
        let next = AtomicUsize::new(0);
        let op = SyncPtr(out.as_mut_ptr());
        pool.run_dynamic(|_, _| {
            let mut bufs = B::default();
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                for item in c * chunk..((c + 1) * chunk).min(n_items) {
                    let (t, h) = (item / n_head, item % n_head);
                    let (lo, hi) = key_range(self.params, self.pos_start + t, seq_len);
                    let qh = &self.q[(t * n_head + h) * dk..(t * n_head + h + 1) * dk];
                    // SAFETY: (t, h) is inside out (n_tokens x n_head x dv, checked by the
                    // callers) and each item is handled by exactly one thread.
                    let dst = unsafe { std::slice::from_raw_parts_mut(op.get().add((t * n_head + h) * dv), dv) };
                    let sink = self.params.sinks.as_ref().map(|s| s[h]);
                    row(&mut bufs, h / self.group, sink, qh, lo, hi, dst);
                }
            }
        });
    }
}

impl Default for AttnParams {
    fn default() -> Self {
        AttnParams { scale: None, causal: true, sliding_window: None, softcap: None, sinks: None }
    }
}

impl KvCache {
    /// Zeroed f16 cache of `n_blocks` blocks of `block_size` tokens for each of `n_layer` layers.
    pub fn new(n_layer: usize, n_head_kv: usize, head_dim_k: usize, head_dim_v: usize, block_size: usize, n_blocks: usize) -> Self {
        let slots = n_layer * n_blocks * block_size * n_head_kv;
        KvCache {
            n_layer,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            block_size,
            n_blocks,
            ty: KvCacheType::F16,
            k: vec![0; slots * head_dim_k],
            v: vec![0; slots * head_dim_v],
            kq: Vec::new(),
            vq: Vec::new(),
            scales: KvHeadScales::default(),
            v_in_k: false,
        }
    }

    /// [`new`](Self::new) with elements of type `ty`; q8_0 needs head dims that are multiples of 32.
    pub fn with_type(
        ty: KvCacheType,
        n_layer: usize,
        n_head_kv: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        block_size: usize,
        n_blocks: usize,
    ) -> Result<Self, CpuError> {
        if ty == KvCacheType::F16 {
            return Ok(Self::new(n_layer, n_head_kv, head_dim_k, head_dim_v, block_size, n_blocks));
        }
        for dim in [head_dim_k, head_dim_v] {
            if dim == 0 || !dim.is_multiple_of(ty.block_len()) {
                return Err(CpuError::KvCacheHeadDim { ty: ty.name(), dim, block: ty.block_len() });
            }
        }
        let slots = n_layer * n_blocks * block_size * n_head_kv;
        Ok(KvCache {
            n_layer,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            block_size,
            n_blocks,
            ty,
            k: Vec::new(),
            v: Vec::new(),
            kq: vec![0; slots * ty.row_bytes(head_dim_k)],
            vq: vec![0; slots * ty.row_bytes(head_dim_v)],
            scales: KvHeadScales::default(),
            v_in_k: false,
        })
    }

    /// A cache whose V is the first `head_dim_v` columns of each K row (`head_dim_v <= head_dim_k`):
    /// only K rows are stored, so MLA's latent (the V) and its rope key (the rest of K) take one
    /// row per token and KV head. [`write`](Self::write) then takes an empty `v`.
    pub fn with_v_in_k(
        ty: KvCacheType,
        n_layer: usize,
        n_head_kv: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        block_size: usize,
        n_blocks: usize,
    ) -> Result<Self, CpuError> {
        if head_dim_v == 0 || head_dim_v > head_dim_k {
            return Err(CpuError::VInKHeadDims { dk: head_dim_k, dv: head_dim_v });
        }
        // Quantized rows: V must be a whole-block prefix of the K row.
        for dim in [head_dim_k, head_dim_v] {
            if ty != KvCacheType::F16 && !dim.is_multiple_of(ty.block_len()) {
                return Err(CpuError::KvCacheHeadDim { ty: ty.name(), dim, block: ty.block_len() });
            }
        }
        let slots = n_layer * n_blocks * block_size * n_head_kv;
        let (k, kq) = if ty == KvCacheType::F16 {
            (vec![0; slots * head_dim_k], Vec::new())
        } else {
            (Vec::new(), vec![0; slots * ty.row_bytes(head_dim_k)])
        };
        Ok(KvCache {
            n_layer,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            block_size,
            n_blocks,
            ty,
            k,
            v: Vec::new(),
            kq,
            vq: Vec::new(),
            scales: KvHeadScales::default(),
            v_in_k: true,
        })
    }

    /// Whether V is read from K (see [`with_v_in_k`](Self::with_v_in_k)).
    pub fn v_in_k(&self) -> bool {
        self.v_in_k
    }

    /// Per-tensor fp8 scales (calibrated `k_scale` / `v_scale`) of every call that gives none:
    /// stored values are `x / scale`. Applies to rows written afterwards; ignored by f16 and
    /// q8_0 caches.
    pub fn set_fp8_scales(&mut self, k_scale: f32, v_scale: f32) -> Result<(), CpuError> {
        let scales = KvHeadScales::per_tensor(k_scale, v_scale);
        scales.check("set_fp8_scales", self.n_head_kv)?;
        self.scales = scales;
        Ok(())
    }

    /// The scales a call uses: its own (checked against the KV heads), else the cache's.
    fn scales_of<'a>(&'a self, op: &'static str, given: Option<&'a KvHeadScales>) -> Result<&'a KvHeadScales, CpuError> {
        match given {
            Some(s) if self.ty == KvCacheType::Fp8E4M3 => {
                s.check(op, self.n_head_kv)?;
                Ok(s)
            }
            _ => Ok(&self.scales),
        }
    }

    /// The element type.
    pub fn cache_type(&self) -> KvCacheType {
        self.ty
    }

    /// Bytes of K and V storage in total.
    pub fn bytes(&self) -> usize {
        2 * (self.k.len() + self.v.len()) + self.kq.len() + self.vq.len()
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }
    pub fn n_head_kv(&self) -> usize {
        self.n_head_kv
    }
    pub fn head_dim_k(&self) -> usize {
        self.head_dim_k
    }
    pub fn head_dim_v(&self) -> usize {
        self.head_dim_v
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Index of (layer, pos) in slot units, after checking the block table and block id.
    fn slot(&self, op: &'static str, layer: usize, block_table: &[u32], pos: usize) -> Result<usize, CpuError> {
        let index = pos / self.block_size.max(1);
        let block = *block_table.get(index).ok_or(CpuError::BlockTableTooShort { op, pos, index, len: block_table.len() })?;
        if block as usize >= self.n_blocks {
            return Err(CpuError::BlockOutOfRange { op, block, n_blocks: self.n_blocks });
        }
        Ok((layer * self.n_blocks + block as usize) * self.block_size + pos % self.block_size)
    }

    fn check_layer(&self, op: &'static str, layer: usize) -> Result<(), CpuError> {
        if layer >= self.n_layer {
            return Err(CpuError::LayerOutOfRange { op, layer, n_layer: self.n_layer });
        }
        Ok(())
    }

    /// Store K and V of `n_tokens` tokens at positions `pos_start..` (each `n_tokens x n_head_kv x
    /// head_dim`, f32) into the sequence's blocks, rounding to f16 (or quantizing: fp8 with the
    /// cache's scales).
    pub fn write(
        &mut self,
        layer: usize,
        block_table: &[u32],
        pos_start: usize,
        k: &[f32],
        v: &[f32],
        n_tokens: usize,
    ) -> Result<(), CpuError> {
        self.write_scaled(layer, block_table, pos_start, k, v, n_tokens, None)
    }

    /// [`write`](Self::write) with this layer's fp8 scales (None: the cache's; ignored by f16
    /// and q8_0 caches). Attention over these rows must be given the same scales.
    #[allow(clippy::too_many_arguments)]
    pub fn write_scaled(
        &mut self,
        layer: usize,
        block_table: &[u32],
        pos_start: usize,
        k: &[f32],
        v: &[f32],
        n_tokens: usize,
        scales: Option<&KvHeadScales>,
    ) -> Result<(), CpuError> {
        const OP: &str = "kv_write";
        self.check_layer(OP, layer)?;
        // V read from K: no V rows (the caller passes an empty `v`).
        let hv = if self.v_in_k { 0 } else { self.n_head_kv * self.head_dim_v };
        let hk = self.n_head_kv * self.head_dim_k;
        crate::matmul::check_len(OP, "k", k.len(), n_tokens.checked_mul(hk))?;
        crate::matmul::check_len(OP, "v", v.len(), n_tokens.checked_mul(hv))?;
        if self.ty != KvCacheType::F16 {
            let (dk, dv) = (self.head_dim_k, self.head_dim_v);
            let (rk, rv) = (self.ty.row_bytes(dk), self.ty.row_bytes(dv));
            let sc = self.scales_of(OP, scales)?;
            // Inverse scales per KV head (q8_0 ignores them).
            let inv: Vec<(f32, f32)> = (0..self.n_head_kv).map(|h| (1.0 / sc.k_of(h), 1.0 / sc.v_of(h))).collect();
            for t in 0..n_tokens {
                let s = self.slot(OP, layer, block_table, pos_start + t)?;
                for (h, &(ik, iv)) in inv.iter().enumerate() {
                    let (r, x) = ((s * self.n_head_kv + h) * rk, &k[(t * self.n_head_kv + h) * dk..][..dk]);
                    kv_quant::quantize_row(self.ty, x, ik, &mut self.kq[r..r + rk]);
                    if self.v_in_k {
                        continue;
                    }
                    let (r, x) = ((s * self.n_head_kv + h) * rv, &v[(t * self.n_head_kv + h) * dv..][..dv]);
                    kv_quant::quantize_row(self.ty, x, iv, &mut self.vq[r..r + rv]);
                }
            }
            return Ok(());
        }
        for t in 0..n_tokens {
            let s = self.slot(OP, layer, block_table, pos_start + t)?;
            for (d, &x) in self.k[s * hk..(s + 1) * hk].iter_mut().zip(&k[t * hk..(t + 1) * hk]) {
                *d = rocmforge_quant::f32_to_f16(x);
            }
            for (d, &x) in self.v[s * hv..(s + 1) * hv].iter_mut().zip(&v[t * hv..(t + 1) * hv]) {
                *d = rocmforge_quant::f32_to_f16(x);
            }
        }
        Ok(())
    }

    /// Read back K (or V) of head `h` at `pos` as f32, dequantized (for tests and debugging).
    pub fn read(&self, layer: usize, block_table: &[u32], pos: usize, h: usize, value: bool, out: &mut [f32]) -> Result<(), CpuError> {
        self.read_scaled(layer, block_table, pos, h, value, None, out)
    }

    /// [`read`](Self::read) of rows written with these fp8 scales (None: the cache's).
    #[allow(clippy::too_many_arguments)]
    pub fn read_scaled(
        &self,
        layer: usize,
        block_table: &[u32],
        pos: usize,
        h: usize,
        value: bool,
        scales: Option<&KvHeadScales>,
        out: &mut [f32],
    ) -> Result<(), CpuError> {
        self.check_layer("kv_read", layer)?;
        let s = self.slot("kv_read", layer, block_table, pos)?;
        // V read from K: the K row, of which the caller takes `head_dim_v` values.
        let value = value && !self.v_in_k;
        if self.ty != KvCacheType::F16 {
            let h = h.min(self.n_head_kv.saturating_sub(1));
            let sc = self.scales_of("kv_read", scales)?;
            let (buf, hd, scale) = if value { (&self.vq, self.head_dim_v, sc.v_of(h)) } else { (&self.kq, self.head_dim_k, sc.k_of(h)) };
            let rb = self.ty.row_bytes(hd);
            let base = (s * self.n_head_kv + h) * rb;
            let n = out.len().min(hd);
            let mut row = vec![0f32; hd];
            kv_quant::dequantize_row(self.ty, &buf[base..base + rb], scale, &mut row);
            out[..n].copy_from_slice(&row[..n]);
            return Ok(());
        }
        let (buf, hd) = if value { (&self.v, self.head_dim_v) } else { (&self.k, self.head_dim_k) };
        let base = (s * self.n_head_kv + h.min(self.n_head_kv.saturating_sub(1))) * hd;
        for (o, &b) in out.iter_mut().zip(&buf[base..base + hd]) {
            *o = f16_bits_to_f32(b);
        }
        Ok(())
    }
}

/// Attention of `n_tokens` queries (`q`: `n_tokens x n_head x head_dim_k`) at positions
/// `pos_start..` over the sequence's cached K/V (already written for these tokens). Output
/// `out`: `n_tokens x n_head x head_dim_v`. See the module header.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    cache: &KvCache,
    layer: usize,
    block_table: &[u32],
    q: &[f32],
    n_tokens: usize,
    pos_start: usize,
    n_head: usize,
    params: &AttnParams,
    out: &mut [f32],
) -> Result<(), CpuError> {
    attention_isa(pool, Isa::detect(), cache, layer, block_table, q, n_tokens, pos_start, n_head, params, out)
}

/// [`attention`] at an explicit instruction-set level (tests compare paths).
#[allow(clippy::too_many_arguments)]
pub fn attention_isa(
    pool: &ThreadPool,
    isa: Isa,
    cache: &KvCache,
    layer: usize,
    block_table: &[u32],
    q: &[f32],
    n_tokens: usize,
    pos_start: usize,
    n_head: usize,
    params: &AttnParams,
    out: &mut [f32],
) -> Result<(), CpuError> {
    attention_with_scales(pool, isa, cache, layer, block_table, q, n_tokens, pos_start, n_head, params, None, out)
}

/// [`attention_isa`] over rows written with this layer's fp8 scales (`KvCache::write_scaled`;
/// None: the cache's own; ignored by f16 and q8_0 caches).
#[allow(clippy::too_many_arguments)]
pub fn attention_with_scales(
    pool: &ThreadPool,
    isa: Isa,
    cache: &KvCache,
    layer: usize,
    block_table: &[u32],
    q: &[f32],
    n_tokens: usize,
    pos_start: usize,
    n_head: usize,
    params: &AttnParams,
    scales: Option<&KvHeadScales>,
    out: &mut [f32],
) -> Result<(), CpuError> {
    const OP: &str = "attention";
    let isa = isa.clamp();
    cache.check_layer(OP, layer)?;
    let sc = cache.scales_of(OP, scales)?;
    let (n_kv, dk, dv) = (cache.n_head_kv, cache.head_dim_k, cache.head_dim_v);
    if n_kv == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(CpuError::BadHeadGrouping { op: OP, n_head, n_head_kv: n_kv });
    }
    crate::matmul::check_len(OP, "q", q.len(), n_tokens.checked_mul(n_head * dk))?;
    crate::matmul::check_len(OP, "out", out.len(), n_tokens.checked_mul(n_head * dv))?;
    if let Some(s) = &params.sinks {
        crate::matmul::check_len(OP, "sinks", s.len(), Some(n_head))?;
    }
    if n_tokens == 0 {
        return Ok(());
    }
    let seq_len = pos_start + n_tokens;
    // Check every block the queries will touch once, up front, so the workers cannot fail. Keys
    // before the first query's range (the earliest of all) are never read: behind a sliding
    // window, the engine may have given those blocks back (their table entries are then invalid).
    let first_key = key_range(params, pos_start, seq_len).0;
    for p in (first_key..seq_len).step_by(cache.block_size.max(1)).chain(std::iter::once(seq_len - 1)) {
        cache.slot(OP, layer, block_table, p)?;
    }
    let group = n_head / n_kv;
    let scale = params.scale.unwrap_or(1.0 / (dk as f32).sqrt());
    let bs = cache.block_size;
    if cache.ty != KvCacheType::F16 {
        // llama.cpp's flash-attention order: the scale is divided by the softcap up front; fp8
        // multiplies in each KV head's K scale (V read from K: K's scales decode V too).
        let qscale = params.softcap.map_or(scale, |cap| scale / cap);
        let fp8 = cache.ty == KvCacheType::Fp8E4M3;
        let kmul = (0..n_kv).map(|g| if fp8 { qscale * sc.k_of(g) } else { qscale }).collect();
        let vmul = (0..n_kv)
            .map(|g| {
                if !fp8 {
                    1.0
                } else if cache.v_in_k {
                    sc.k_of(g)
                } else {
                    sc.v_of(g)
                }
            })
            .collect();
        let ctx = kv_quant::QCtx {
            ty: cache.ty,
            k: &cache.kq,
            v: if cache.v_in_k { &cache.kq } else { &cache.vq },
            v_stride: cache.ty.row_bytes(if cache.v_in_k { dk } else { dv }),
            dk,
            dv,
            n_kv,
            bs,
            layer_base: layer * cache.n_blocks * bs,
            block_table,
            kmul,
            softcap: params.softcap,
            vmul,
        };
        kv_quant::attention_rows(pool, isa, &ctx, q, n_tokens, pos_start, n_head, params, out);
        return Ok(());
    }
    let ctx = RowCtx {
        k: &cache.k,
        v: if cache.v_in_k { &cache.k } else { &cache.v },
        v_stride: if cache.v_in_k { dk } else { dv },
        dk,
        dv,
        n_kv,
        bs,
        // Row (slot) index of the first slot of block `b` of this layer.
        layer_base: layer * cache.n_blocks * bs,
        block_table,
        scale,
        softcap: params.softcap,
    };
    // llama.cpp runs tinyBLAS for the f16 attention matmuls when the batch has two or more
    // tokens and the summed dimension is a multiple of 16 (and the output rows a multiple of 4),
    // else `ggml_vec_dot_f16`; we follow it (module header).
    // Batch-invariant mode: every query takes the one-token order, whatever the chunk size.
    let tiny = n_tokens >= 2 && !crate::kquant::batch_invariant();
    let orders = (
        if tiny && dk.is_multiple_of(16) { DotOrder::Tiny } else { DotOrder::VecDot },
        if tiny && dv.is_multiple_of(4) { DotOrder::Tiny } else { DotOrder::VecDot },
    );
    let rows = QueryRows { q, n_tokens, n_head, group, dk, dv, pos_start, params };
    rows.run(pool, out, |bufs: &mut RowBufs, g, sink, qh, lo, hi, dst| attn_row(isa, &ctx, g, sink, qh, lo, hi, orders, bufs, dst));
    Ok(())
}

/// What one attention row needs of the cache.
struct RowCtx<'a> {
    k: &'a [u16],
    /// V rows (`dv` values at every `v_stride`-th value: `dv`, or `dk` when V is read from K).
    v: &'a [u16],
    v_stride: usize,
    dk: usize,
    dv: usize,
    n_kv: usize,
    bs: usize,
    layer_base: usize,
    block_table: &'a [u32],
    scale: f32,
    softcap: Option<f32>,
}

impl RowCtx<'_> {
    /// Slot (token row) of position p; positions < seq_len were validated against the table.
    #[inline(always)]
    fn slot(&self, p: usize) -> usize {
        self.layer_base + self.block_table[p / self.bs] as usize * self.bs + p % self.bs
    }
}

/// Summation order of one f16 dot product (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotOrder {
    /// `ggml_vec_dot_f16`: accumulators a0..a3 (16 lanes) over steps of 64, leftovers in f64.
    VecDot,
    /// tinyBLAS: one 16-lane accumulator over steps of 16 (n a multiple of 16).
    Tiny,
}

/// Scratch of one attention row.
#[derive(Default)]
struct RowBufs {
    qf: Vec<f32>,
    kr: Vec<f32>,
    scores: Vec<f32>,
    vb: Vec<f32>,
    acc: Vec<f32>,
}

/// `_mm512_reduce_add_ps` as GCC implements it: (hi8 + lo8), (hi4 + lo4), then (0+2) + (1+3).
#[inline(always)]
pub(crate) fn reduce16(a: &[f32; 16]) -> f32 {
    let t: [f32; 8] = std::array::from_fn(|i| a[8 + i] + a[i]);
    let s: [f32; 4] = std::array::from_fn(|i| t[4 + i] + t[i]);
    (s[0] + s[2]) + (s[1] + s[3])
}

#[inline(always)]
fn round_f16(x: f32) -> f32 {
    f16_bits_to_f32(rocmforge_quant::f32_to_f16(x))
}

/// Dot product of `a` and `b` (f16 values held in f32, so every product is exact) in `order`.
#[inline(always)]
fn dot_f16(order: DotOrder, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    match order {
        DotOrder::Tiny => {
            let mut acc = [0f32; 16];
            for l in (0..n).step_by(16) {
                for i in 0..16 {
                    acc[i] = a[l + i].mul_add(b[l + i], acc[i]);
                }
            }
            reduce16(&acc)
        }
        DotOrder::VecDot => {
            let np = n & !63;
            let mut acc = [[0f32; 16]; 4];
            for c in (0..np).step_by(64) {
                for (j, aj) in acc.iter_mut().enumerate() {
                    for i in 0..16 {
                        aj[i] = a[c + 16 * j + i].mul_add(b[c + 16 * j + i], aj[i]);
                    }
                }
            }
            let x: [f32; 16] = std::array::from_fn(|i| (acc[0][i] + acc[2][i]) + (acc[1][i] + acc[3][i]));
            let mut sum = reduce16(&x) as f64;
            for i in np..n {
                sum += (a[i] * b[i]) as f64;
            }
            sum as f32
        }
    }
}

/// One query row over keys lo..hi of KV head g: scores, softmax, weighted V sum into `out`.
#[allow(clippy::too_many_arguments)]
fn attn_row(
    isa: Isa,
    c: &RowCtx<'_>,
    g: usize,
    sink: Option<f32>,
    q: &[f32],
    lo: usize,
    hi: usize,
    orders: (DotOrder, DotOrder),
    bufs: &mut RowBufs,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 && c.dk.is_multiple_of(64) && c.dv.is_multiple_of(16) {
            // SAFETY: AVX-512 F/BW/VL detected (isa clamped); dims checked; every position in
            // lo..hi has a validated slot.
            unsafe { attn_row_512(c, g, sink, q, lo, hi, orders, bufs, out) };
            return;
        }
        if isa >= Isa::Avx512 {
            // SAFETY: AVX-512 F/BW/VL detected (isa clamped).
            unsafe { attn_row_avx512(isa, c, g, sink, q, lo, hi, orders, bufs, out) };
            return;
        }
        if isa >= Isa::Avx2 {
            // SAFETY: AVX2/FMA/F16C detected (isa clamped).
            unsafe { attn_row_avx2(isa, c, g, sink, q, lo, hi, orders, bufs, out) };
            return;
        }
    }
    attn_row_body(isa, c, g, sink, q, lo, hi, orders, bufs, out)
}

/// `_mm512_reduce_add_ps` as GCC expands it (see `reduce16`), spelled out.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn reduce16_512(v: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    let t = _mm256_add_ps(crate::qmatmul::hi256(v), _mm512_castps512_ps256(v));
    let s = _mm_add_ps(_mm256_extractf128_ps::<1>(t), _mm256_castps256_ps128(t));
    let u = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)))
}

/// `ggml_v_expf` on 16 lanes (the same operations as `simd::ggml_expf`, which is its lane-wise
/// twin).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn expf_512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
    let r = c(0x4B40_0000);
    let z = _mm512_fmadd_ps(x, c(0x3FB8_AA3B), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(n, c(0x35BF_BE8E), _mm512_fnmadd_ps(n, c(0x3F31_7200), x));
    let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(c(0x3C07_2010), b, c(0x3D2B_9F17)), u, _mm512_fmadd_ps(c(0x3E2A_AF33), b, c(0x3EFF_FEDB))),
        u,
        _mm512_fmadd_ps(c(0x3F7F_FFF6), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    if big == 0 {
        return res;
    }
    let le0 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
    let alt = _mm512_mask_blend_ps(le0, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
    _mm512_mask_blend_ps(big, res, alt)
}

/// The AVX-512 row for dk % 64 == 0, dv % 16 == 0: `attn_row_body`'s arithmetic, one 16-lane
/// accumulator per zmm (bit-identical; the portable body is the reference in the tests).
///
/// # Safety
/// AVX-512 F/BW/VL, FMA and F16C must be available; dims as above; slots of lo..hi valid.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attn_row_512(
    c: &RowCtx<'_>,
    g: usize,
    sink: Option<f32>,
    q: &[f32],
    lo: usize,
    hi: usize,
    (kq_order, kqv_order): (DotOrder, DotOrder),
    b: &mut RowBufs,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let (dk, dv) = (c.dk, c.dv);
    if hi <= lo {
        out.fill(0.0);
        return;
    }
    let r16 = |v: __m512| _mm512_cvtph_ps(_mm512_cvtps_ph::<RNE>(v));
    b.qf.resize(dk, 0.0);
    let qf = b.qf.as_mut_ptr();
    for i in (0..dk).step_by(16) {
        _mm512_storeu_ps(qf.add(i), r16(_mm512_loadu_ps(q.as_ptr().add(i))));
    }
    let ldh = |p: *const u16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
    let (blk0, blk1) = (lo / 16, (hi - 1) / 16 + 1);
    let base = 16 * blk0;
    b.scores.clear();
    b.scores.resize(16 * (blk1 - blk0), 0.0);
    let sc = b.scores.as_mut_ptr();
    let mut max = f32::NEG_INFINITY;
    // K and V rows usually come from DRAM in decode (the weights streamed through the caches
    // in between): fetch the K row a few keys ahead and this key's V row for the second pass.
    let pf = |p: *const u16, bytes: usize| {
        let mut o = 0;
        while o < bytes {
            _mm_prefetch::<_MM_HINT_T0>((p as *const i8).add(o));
            o += 64;
        }
    };
    for p in lo..hi {
        let kr = c.k.as_ptr().add((c.slot(p) * c.n_kv + g) * dk);
        if p + 8 < hi {
            pf(c.k.as_ptr().add((c.slot(p + 8) * c.n_kv + g) * dk), 2 * dk);
        }
        pf(c.v.as_ptr().add((c.slot(p) * c.n_kv + g) * c.v_stride), 2 * dv);
        let s = match kq_order {
            DotOrder::VecDot => {
                let mut acc = [_mm512_setzero_ps(); 4];
                for c0 in (0..dk).step_by(64) {
                    for (a, acc) in acc.iter_mut().enumerate() {
                        let o = c0 + 16 * a;
                        *acc = _mm512_fmadd_ps(ldh(kr.add(o)), _mm512_loadu_ps(qf.add(o)), *acc);
                    }
                }
                reduce16_512(_mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3])))
            }
            DotOrder::Tiny => {
                let mut acc = _mm512_setzero_ps();
                for l in (0..dk).step_by(16) {
                    acc = _mm512_fmadd_ps(ldh(kr.add(l)), _mm512_loadu_ps(qf.add(l)), acc);
                }
                reduce16_512(acc)
            }
        };
        let mut s = s * c.scale;
        if let Some(cap) = c.softcap {
            s = cap * (s / cap).tanh();
        }
        *sc.add(p - base) = s;
        max = max.max(s);
    }
    if let Some(s) = sink {
        max = max.max(s);
    }
    let mut sum = 0f64;
    let mx = _mm512_set1_ps(max);
    for blk in 0..blk1 - blk0 {
        let p0 = base + 16 * blk;
        // Lanes outside lo..hi are masked keys: exactly 0.
        let first = lo.saturating_sub(p0).min(16);
        let last = (hi - p0).min(16);
        let mask: __mmask16 = (((1u32 << last) - 1) & !((1u32 << first) - 1)) as u16;
        let e = _mm512_maskz_mov_ps(mask, expf_512(_mm512_sub_ps(_mm512_loadu_ps(sc.add(16 * blk)), mx)));
        _mm512_storeu_ps(sc.add(16 * blk), e);
        sum += reduce16_512(e) as f64;
    }
    if let Some(s) = sink {
        sum += (s - max).exp() as f64;
    }
    let inv = _mm512_set1_ps((1.0 / sum) as f32);
    for blk in 0..blk1 - blk0 {
        let v = _mm512_loadu_ps(sc.add(16 * blk));
        _mm512_storeu_ps(sc.add(16 * blk), r16(_mm512_mul_ps(v, inv)));
    }
    let n_acc = if kqv_order == DotOrder::VecDot { 4 } else { 1 };
    b.acc.clear();
    b.acc.resize(n_acc * 16 * dv, 0.0);
    let acc = b.acc.as_mut_ptr();
    for p in lo..hi {
        let pw = *sc.add(p - base);
        if pw == 0.0 {
            continue;
        }
        let vr = c.v.as_ptr().add((c.slot(p) * c.n_kv + g) * c.v_stride);
        let a = if n_acc == 4 { (p % 64) / 16 } else { 0 };
        let row = acc.add((a * 16 + p % 16) * dv);
        let w = _mm512_set1_ps(pw);
        for d in (0..dv).step_by(16) {
            _mm512_storeu_ps(row.add(d), _mm512_fmadd_ps(ldh(vr.add(d)), w, _mm512_loadu_ps(row.add(d))));
        }
    }
    let lane = |a: usize, l: usize, d: usize| _mm512_loadu_ps(acc.add((a * 16 + l) * dv + d));
    for d in (0..dv).step_by(16) {
        let x: [__m512; 16] = std::array::from_fn(|l| {
            if n_acc == 4 {
                _mm512_add_ps(_mm512_add_ps(lane(0, l, d), lane(2, l, d)), _mm512_add_ps(lane(1, l, d), lane(3, l, d)))
            } else {
                lane(0, l, d)
            }
        });
        let t: [__m512; 8] = std::array::from_fn(|i| _mm512_add_ps(x[8 + i], x[i]));
        let s4: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(t[4 + i], t[i]));
        let r = _mm512_add_ps(_mm512_add_ps(s4[0], s4[2]), _mm512_add_ps(s4[1], s4[3]));
        _mm512_storeu_ps(out.as_mut_ptr().add(d), r);
    }
}

/// `attn_row_body` compiled for AVX-512 (same bits, wider code).
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA and F16C must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attn_row_avx512(
    isa: Isa,
    c: &RowCtx<'_>,
    g: usize,
    sink: Option<f32>,
    q: &[f32],
    lo: usize,
    hi: usize,
    orders: (DotOrder, DotOrder),
    bufs: &mut RowBufs,
    out: &mut [f32],
) {
    attn_row_body(isa, c, g, sink, q, lo, hi, orders, bufs, out)
}

/// `attn_row_body` compiled for AVX2 + FMA (same bits).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attn_row_avx2(
    isa: Isa,
    c: &RowCtx<'_>,
    g: usize,
    sink: Option<f32>,
    q: &[f32],
    lo: usize,
    hi: usize,
    orders: (DotOrder, DotOrder),
    bufs: &mut RowBufs,
    out: &mut [f32],
) {
    attn_row_body(isa, c, g, sink, q, lo, hi, orders, bufs, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attn_row_body(
    isa: Isa,
    c: &RowCtx<'_>,
    g: usize,
    sink: Option<f32>,
    q: &[f32],
    lo: usize,
    hi: usize,
    (kq_order, kqv_order): (DotOrder, DotOrder),
    b: &mut RowBufs,
    out: &mut [f32],
) {
    let (dk, dv) = (c.dk, c.dv);
    out.fill(0.0);
    if hi <= lo {
        return;
    }
    b.qf.resize(dk, 0.0);
    for (o, &v) in b.qf.iter_mut().zip(q) {
        *o = round_f16(v);
    }
    b.kr.resize(dk, 0.0);
    // Scores over whole 16-position blocks (lanes aligned on position 0); outside lo..hi: 0.
    let (blk0, blk1) = (lo / 16, (hi - 1) / 16 + 1);
    let base = 16 * blk0;
    b.scores.clear();
    b.scores.resize(16 * (blk1 - blk0), 0.0);
    let mut max = f32::NEG_INFINITY;
    for p in lo..hi {
        let kb = (c.slot(p) * c.n_kv + g) * dk;
        simd::f16_slice_to_f32(isa, &c.k[kb..kb + dk], &mut b.kr);
        let mut s = dot_f16(kq_order, &b.kr, &b.qf) * c.scale;
        if let Some(cap) = c.softcap {
            s = cap * (s / cap).tanh();
        }
        b.scores[p - base] = s;
        max = max.max(s);
    }
    // Attention sinks join the max and the denominator (llama.cpp's soft_max order, libm expf).
    if let Some(s) = sink {
        max = max.max(s);
    }
    let mut sum = 0f64;
    for blk in 0..blk1 - blk0 {
        let e = <&mut [f32; 16]>::try_from(&mut b.scores[16 * blk..16 * blk + 16]).unwrap_or_else(|_| unreachable!("16-element block"));
        for (i, v) in e.iter_mut().enumerate() {
            let p = base + 16 * blk + i;
            *v = if p >= lo && p < hi { crate::simd::ggml_expf(*v - max) } else { 0.0 };
        }
        sum += reduce16(e) as f64;
    }
    if let Some(s) = sink {
        sum += (s - max).exp() as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in b.scores.iter_mut() {
        *v = round_f16(*v * inv);
    }
    // Weighted V sum, per output element d a dot over key positions in `kqv_order`:
    // acc[a][lane][d], a = accumulator (VecDot: (position % 64) / 16; Tiny: 0), lane = position % 16.
    let n_acc = if kqv_order == DotOrder::VecDot { 4 } else { 1 };
    b.acc.clear();
    b.acc.resize(n_acc * 16 * dv, 0.0);
    b.vb.resize(dv, 0.0);
    for p in lo..hi {
        let pw = b.scores[p - base];
        if pw == 0.0 {
            // fma(v, 0, acc) = acc: skipping is exact.
            continue;
        }
        let vbase = (c.slot(p) * c.n_kv + g) * c.v_stride;
        simd::f16_slice_to_f32(isa, &c.v[vbase..vbase + dv], &mut b.vb);
        let a = if n_acc == 4 { (p % 64) / 16 } else { 0 };
        let row = &mut b.acc[(a * 16 + p % 16) * dv..(a * 16 + p % 16 + 1) * dv];
        for (o, &v) in row.iter_mut().zip(&b.vb) {
            *o = v.mul_add(pw, *o);
        }
    }
    // Fold: VecDot (a0 + a2) + (a1 + a3) per lane, then the 16-lane `reduce16` per d.
    let lane = |b: &RowBufs, a: usize, l: usize, d: usize| b.acc[(a * 16 + l) * dv + d];
    for (d, o) in out.iter_mut().enumerate() {
        let x: [f32; 16] = std::array::from_fn(|l| {
            if n_acc == 4 {
                (lane(b, 0, l, d) + lane(b, 2, l, d)) + (lane(b, 1, l, d) + lane(b, 3, l, d))
            } else {
                lane(b, 0, l, d)
            }
        });
        *o = reduce16(&x);
    }
}
