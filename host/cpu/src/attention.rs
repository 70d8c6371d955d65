//! Paged KV cache memory and attention over it.
//!
//! The cache holds, per layer, `n_blocks` blocks of `block_size` token slots; a sequence reaches
//! its tokens through a block table (position p lives in block `block_table[p / block_size]`,
//! slot `p % block_size`), so blocks may be scattered anywhere in the pool (vLLM's PagedAttention
//! layout). K and V are stored as f16, as llama.cpp's default cache type does.
//!
//! ```text
//!   k[layer][block][slot][head_kv][head_dim_k]   (f16 bits)
//!   v[layer][block][slot][head_kv][head_dim_v]
//! ```
//!
//! Attention computes, for query token t at position `pos_start + t` and head h (KV head
//! `h / (n_head / n_head_kv)`), `softmax(scale * q.k_p)` over the allowed keys p (causal:
//! p <= q_pos; sliding window w: p > q_pos - w; optional tanh softcap on the logits) and the
//! weighted sum of v_p. Work is split over (token, head) rows pulled in small chunks by the
//! threads; K / V rows are converted from f16 in registers (F16C) as they are read.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::CpuError;
use crate::pool::ThreadPool;
use crate::qmatmul::SyncPtr;
use crate::simd::{self, f16_bits_to_f32, Isa};

/// Paged K/V storage for all layers of one model (f16).
pub struct KvCache {
    n_layer: usize,
    n_head_kv: usize,
    head_dim_k: usize,
    head_dim_v: usize,
    block_size: usize,
    n_blocks: usize,
    k: Vec<u16>,
    v: Vec<u16>,
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
}

impl Default for AttnParams {
    fn default() -> Self {
        AttnParams {
            scale: None,
            causal: true,
            sliding_window: None,
            softcap: None,
        }
    }
}

impl KvCache {
    /// Zeroed cache of `n_blocks` blocks of `block_size` tokens for each of `n_layer` layers.
    pub fn new(
        n_layer: usize,
        n_head_kv: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        block_size: usize,
        n_blocks: usize,
    ) -> Self {
        let slots = n_layer * n_blocks * block_size * n_head_kv;
        KvCache {
            n_layer,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            block_size,
            n_blocks,
            k: vec![0; slots * head_dim_k],
            v: vec![0; slots * head_dim_v],
        }
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
    fn slot(
        &self,
        op: &'static str,
        layer: usize,
        block_table: &[u32],
        pos: usize,
    ) -> Result<usize, CpuError> {
        let index = pos / self.block_size.max(1);
        let block = *block_table.get(index).ok_or(CpuError::BlockTableTooShort {
            op,
            pos,
            index,
            len: block_table.len(),
        })?;
        if block as usize >= self.n_blocks {
            return Err(CpuError::BlockOutOfRange {
                op,
                block,
                n_blocks: self.n_blocks,
            });
        }
        Ok((layer * self.n_blocks + block as usize) * self.block_size + pos % self.block_size)
    }

    fn check_layer(&self, op: &'static str, layer: usize) -> Result<(), CpuError> {
        if layer >= self.n_layer {
            return Err(CpuError::LayerOutOfRange {
                op,
                layer,
                n_layer: self.n_layer,
            });
        }
        Ok(())
    }

    /// Store K and V of `n_tokens` tokens at positions `pos_start..` (each `n_tokens x n_head_kv x
    /// head_dim`, f32) into the sequence's blocks, rounding to f16.
    pub fn write(
        &mut self,
        layer: usize,
        block_table: &[u32],
        pos_start: usize,
        k: &[f32],
        v: &[f32],
        n_tokens: usize,
    ) -> Result<(), CpuError> {
        const OP: &str = "kv_write";
        self.check_layer(OP, layer)?;
        let (hk, hv) = (
            self.n_head_kv * self.head_dim_k,
            self.n_head_kv * self.head_dim_v,
        );
        crate::matmul::check_len(OP, "k", k.len(), n_tokens.checked_mul(hk))?;
        crate::matmul::check_len(OP, "v", v.len(), n_tokens.checked_mul(hv))?;
        for t in 0..n_tokens {
            let s = self.slot(OP, layer, block_table, pos_start + t)?;
            for (d, &x) in self.k[s * hk..(s + 1) * hk]
                .iter_mut()
                .zip(&k[t * hk..(t + 1) * hk])
            {
                *d = rocmforge_quant::f32_to_f16(x);
            }
            for (d, &x) in self.v[s * hv..(s + 1) * hv]
                .iter_mut()
                .zip(&v[t * hv..(t + 1) * hv])
            {
                *d = rocmforge_quant::f32_to_f16(x);
            }
        }
        Ok(())
    }

    /// Read back K (or V) of head `h` at `pos` as f32 (for tests and debugging).
    pub fn read(
        &self,
        layer: usize,
        block_table: &[u32],
        pos: usize,
        h: usize,
        value: bool,
        out: &mut [f32],
    ) -> Result<(), CpuError> {
        self.check_layer("kv_read", layer)?;
        let s = self.slot("kv_read", layer, block_table, pos)?;
        let (buf, hd) = if value {
            (&self.v, self.head_dim_v)
        } else {
            (&self.k, self.head_dim_k)
        };
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
    attention_isa(
        pool,
        Isa::detect(),
        cache,
        layer,
        block_table,
        q,
        n_tokens,
        pos_start,
        n_head,
        params,
        out,
    )
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
    const OP: &str = "attention";
    let isa = isa.clamp();
    cache.check_layer(OP, layer)?;
    let (n_kv, dk, dv) = (cache.n_head_kv, cache.head_dim_k, cache.head_dim_v);
    if n_kv == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(CpuError::BadHeadGrouping {
            op: OP,
            n_head,
            n_head_kv: n_kv,
        });
    }
    crate::matmul::check_len(OP, "q", q.len(), n_tokens.checked_mul(n_head * dk))?;
    crate::matmul::check_len(OP, "out", out.len(), n_tokens.checked_mul(n_head * dv))?;
    if n_tokens == 0 {
        return Ok(());
    }
    let seq_len = pos_start + n_tokens;
    // Check every block the queries will touch once, up front, so the workers cannot fail.
    for p in (0..seq_len)
        .step_by(cache.block_size.max(1))
        .chain(std::iter::once(seq_len - 1))
    {
        cache.slot(OP, layer, block_table, p)?;
    }
    let group = n_head / n_kv;
    let scale = params.scale.unwrap_or(1.0 / (dk as f32).sqrt());
    let bs = cache.block_size;
    let ctx = RowCtx {
        k: &cache.k,
        v: &cache.v,
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
    let n_items = n_tokens * n_head;
    // Items are (token, head) rows; a handful per claim keeps the counter cheap.
    let chunk = (n_items / (pool.n_threads() * 8)).clamp(1, 16);
    let n_chunks = n_items.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let op = SyncPtr(out.as_mut_ptr());
    pool.run_dynamic(|_, _| {
        let mut scores: Vec<f32> = Vec::new();
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            for item in c * chunk..((c + 1) * chunk).min(n_items) {
                let (t, h) = (item / n_head, item % n_head);
                let q_pos = pos_start + t;
                let mut lo = 0;
                let mut hi = if params.causal { q_pos + 1 } else { seq_len };
                if let Some(w) = params.sliding_window {
                    lo = (q_pos + 1).saturating_sub(w);
                    if !params.causal {
                        hi = hi.min(q_pos + w);
                    }
                }
                let qh = &q[(t * n_head + h) * dk..(t * n_head + h + 1) * dk];
                // SAFETY: (t, h) is inside out (n_tokens x n_head x dv, checked above) and each
                // item is handled by exactly one thread.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(op.get().add((t * n_head + h) * dv), dv)
                };
                attn_row(isa, &ctx, h / group, qh, lo, hi, &mut scores, dst);
            }
        }
    });
    Ok(())
}

/// What one attention row needs of the cache.
struct RowCtx<'a> {
    k: &'a [u16],
    v: &'a [u16],
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

/// One query row over keys lo..hi of KV head g: scores, softmax, weighted V sum into `out`.
#[allow(clippy::too_many_arguments)]
fn attn_row(
    isa: Isa,
    c: &RowCtx<'_>,
    g: usize,
    q: &[f32],
    lo: usize,
    hi: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let nk = hi.saturating_sub(lo);
    scores.clear();
    scores.resize(nk, 0.0);
    out.fill(0.0);
    if nk == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && c.dk.is_multiple_of(8) && c.dv.is_multiple_of(8) {
        // SAFETY: AVX2/FMA/F16C detected (isa clamped); dims are multiples of 8; every position
        // in lo..hi has a validated slot, so all K/V rows read are inside the cache.
        unsafe { attn_row_avx2(c, g, q, lo, hi, scores, out) };
        return;
    }
    let mut row = vec![0f32; c.dk.max(c.dv)];
    for (j, p) in (lo..hi).enumerate() {
        let base = (c.slot(p) * c.n_kv + g) * c.dk;
        simd::f16_slice_to_f32(Isa::Scalar, &c.k[base..base + c.dk], &mut row[..c.dk]);
        let mut s = simd::dot_f32(Isa::Scalar, q, &row[..c.dk]) * c.scale;
        if let Some(cap) = c.softcap {
            s = cap * (s / cap).tanh();
        }
        scores[j] = s;
    }
    crate::ops::softmax_isa(Isa::Scalar, scores);
    for (j, p) in (lo..hi).enumerate() {
        let base = (c.slot(p) * c.n_kv + g) * c.dv;
        simd::f16_slice_to_f32(Isa::Scalar, &c.v[base..base + c.dv], &mut row[..c.dv]);
        simd::axpy(Isa::Scalar, scores[j], &row[..c.dv], out);
    }
}

/// AVX2 twin of the scalar body of `attn_row`; f16 K/V converted in registers.
///
/// # Safety
/// AVX2, FMA and F16C must be available; dk and dv multiples of 8; slots of lo..hi valid.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attn_row_avx2(
    c: &RowCtx<'_>,
    g: usize,
    q: &[f32],
    lo: usize,
    hi: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (kp, vp, qp, op) = (c.k.as_ptr(), c.v.as_ptr(), q.as_ptr(), out.as_mut_ptr());
    let mut p = lo;
    while p < hi {
        // Walk one block at a time: its slots are contiguous.
        let run = (c.bs - p % c.bs).min(hi - p);
        let s0 = c.slot(p);
        for i in 0..run {
            let kr = kp.add(((s0 + i) * c.n_kv + g) * c.dk);
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut d = 0;
            while d + 16 <= c.dk {
                a0 = _mm256_fmadd_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(kr.add(d) as *const __m128i)),
                    _mm256_loadu_ps(qp.add(d)),
                    a0,
                );
                a1 = _mm256_fmadd_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(kr.add(d + 8) as *const __m128i)),
                    _mm256_loadu_ps(qp.add(d + 8)),
                    a1,
                );
                d += 16;
            }
            if d < c.dk {
                a0 = _mm256_fmadd_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(kr.add(d) as *const __m128i)),
                    _mm256_loadu_ps(qp.add(d)),
                    a0,
                );
            }
            let mut s = simd::x86::hsum256(_mm256_add_ps(a0, a1)) * c.scale;
            if let Some(cap) = c.softcap {
                s = cap * (s / cap).tanh();
            }
            *scores.get_unchecked_mut(p - lo + i) = s;
        }
        p += run;
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum = simd::x86::exp_shift_sum_avx2(scores.as_mut_ptr(), scores.len(), max);
    let inv = 1.0 / sum;
    let mut p = lo;
    while p < hi {
        let run = (c.bs - p % c.bs).min(hi - p);
        let s0 = c.slot(p);
        for i in 0..run {
            let w = _mm256_set1_ps(*scores.get_unchecked(p - lo + i) * inv);
            let vr = vp.add(((s0 + i) * c.n_kv + g) * c.dv);
            let mut d = 0;
            while d < c.dv {
                let o = _mm256_fmadd_ps(
                    w,
                    _mm256_cvtph_ps(_mm_loadu_si128(vr.add(d) as *const __m128i)),
                    _mm256_loadu_ps(op.add(d)),
                );
                _mm256_storeu_ps(op.add(d), o);
                d += 8;
            }
        }
        p += run;
    }
}
