//! The paged KV cache on the device and the kernels over it (`kernels/attention.cu`, the KV
//! writes of `kernels/ops.cu`): element types f16, q8_0 and fp8 E4M3 in the CPU backend's layout
//! and numerics (`rocmforge_cpu::KvCache`, `kv_quant.rs`), the per-step attention metadata, and
//! split-K ("flash decoding") attention for long contexts with its host-side heuristic.
//!
//! ```text
//!   k[layer][block][slot][head_kv][row_bytes(head_dim_k)]   v[...][row_bytes(head_dim_v)]
//!   f16: dim x u16   q8_0: dim/32 x {f16 d, 32 x i8}   fp8: dim x E4M3FN (times k_scale / v_scale)
//! ```
//!
//! Split-K: a launch with `n_part > 1` partitions gives each (query token, head) `n_part` blocks
//! over slices of its keys and merges their partial softmax states in a second kernel. Which
//! `n_part` to use is decided on the host per step ([`attn_key_parts`] from the longest context,
//! then [`attn_split_parts`] per launch from the (token, head) count, the multiprocessor count and
//! the workspace); the kernels read each query's key range from device memory. So a decode step
//! captured into a graph stays correct for any context as long as the graph is keyed by the
//! token count *and* `attn_key_parts` of the step (the runtime's backend does this), and the
//! workspace ([`AttnWorkspace`]) is allocated once, so its address never changes under a graph.

use crate::device::{Device, DeviceBuffer, Stream};
use crate::error::{GpuError, Result};
use crate::kernels::{grid_1d, need, Kernels};
use crate::module::KernelArgs;

/// Element type of a [`GpuKvCache`] (`rocmforge_cpu::KvCacheType`'s three types; this crate
/// does not depend on the CPU backend).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// IEEE half.
    #[default]
    F16,
    /// ggml's Q8_0 blocks of 32 along the head dim (f16 scale + 32 x i8, 34 bytes).
    Q8_0,
    /// OCP FP8 E4M3 (E4M3FN) per element, one f32 scale per tensor (K, V).
    Fp8E4M3,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Fp8E4M3 => "fp8_e4m3",
        }
    }

    /// Elements per quantization block along the head dim (head dims must be multiples of it).
    pub fn block_len(self) -> usize {
        match self {
            KvType::Q8_0 => 32,
            KvType::F16 | KvType::Fp8E4M3 => 1,
        }
    }

    /// Bytes of one row of `dim` elements (`dim` a multiple of [`block_len`](Self::block_len)).
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            KvType::F16 => 2 * dim,
            KvType::Q8_0 => dim / 32 * 34,
            KvType::Fp8E4M3 => dim,
        }
    }
}

/// The paged KV cache on the device, laid out as `rocmforge_cpu::KvCache` (module header).
pub struct GpuKvCache {
    pub ty: KvType,
    pub n_layer: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub block_size: usize,
    pub n_blocks: usize,
    /// K rows of `ty.row_bytes(head_dim_k)` bytes, `[layer][block][slot][head_kv]`.
    pub k: DeviceBuffer<u8>,
    /// V rows of `ty.row_bytes(head_dim_v)` bytes.
    pub v: DeviceBuffer<u8>,
    /// fp8: stored value = x / scale (1.0 unless set, as vLLM without calibrated scales).
    k_scale: f32,
    v_scale: f32,
    /// fp8: per cache layer, that layer's own K and V scales, one per KV head (on the device;
    /// they override `k_scale` / `v_scale` for that layer).
    layer_scales: Vec<Option<(DeviceBuffer<f32>, DeviceBuffer<f32>)>>,
}

impl GpuKvCache {
    /// An f16 cache of `n_blocks` blocks of `block_size` tokens for each of `n_layer` layers.
    pub fn new(
        dev: &Device,
        n_layer: usize,
        n_head_kv: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        block_size: usize,
        n_blocks: usize,
    ) -> Result<Self> {
        Self::with_type(dev, KvType::F16, n_layer, n_head_kv, head_dim_k, head_dim_v, block_size, n_blocks)
    }

    /// [`new`](Self::new) with elements of type `ty`. Head dims must be multiples of 4 (the
    /// attention kernel reads 4 elements per load) and of the type's block (32 for q8_0).
    #[allow(clippy::too_many_arguments)]
    pub fn with_type(
        dev: &Device,
        ty: KvType,
        n_layer: usize,
        n_head_kv: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        block_size: usize,
        n_blocks: usize,
    ) -> Result<Self> {
        for dim in [head_dim_k, head_dim_v] {
            let unit = ty.block_len().max(4);
            if dim == 0 || !dim.is_multiple_of(unit) {
                return Err(GpuError::shape(
                    "kv_cache",
                    format!("a {} cache needs head dims that are multiples of {unit}, got {dim}", ty.name()),
                ));
            }
        }
        if n_head_kv == 0 || block_size == 0 {
            return Err(GpuError::shape("kv_cache", format!("n_head_kv {n_head_kv}, block_size {block_size}")));
        }
        let slots = n_layer * n_blocks * block_size * n_head_kv;
        Ok(GpuKvCache {
            ty,
            n_layer,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            block_size,
            n_blocks,
            k: dev.alloc((slots * ty.row_bytes(head_dim_k)).max(1))?,
            v: dev.alloc((slots * ty.row_bytes(head_dim_v)).max(1))?,
            k_scale: 1.0,
            v_scale: 1.0,
            layer_scales: (0..n_layer).map(|_| None).collect(),
        })
    }

    /// Bytes a cache of these dimensions takes (for memory planning before allocating).
    pub fn bytes_for(
        ty: KvType,
        n_layer: usize,
        n_head_kv: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        block_size: usize,
        n_blocks: usize,
    ) -> usize {
        n_layer * n_blocks * block_size * n_head_kv * (ty.row_bytes(head_dim_k) + ty.row_bytes(head_dim_v))
    }

    /// Per-tensor fp8 scales (stored value = x / scale), as `rocmforge_cpu::KvCache::set_fp8_scales`:
    /// they apply to rows written afterwards; f16 and q8_0 caches ignore them.
    pub fn set_fp8_scales(&mut self, k_scale: f32, v_scale: f32) -> Result<()> {
        for scale in [k_scale, v_scale] {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(GpuError::shape("kv_cache", format!("fp8 scale {scale} is not a positive finite number")));
            }
        }
        (self.k_scale, self.v_scale) = (k_scale, v_scale);
        Ok(())
    }

    /// fp8 scales of cache layer `layer` alone, per tensor (1 value) or per KV head
    /// (`n_head_kv` values), for K and V: `rocmforge_cpu::KvHeadScales`, which the CPU passes
    /// per call (`write_scaled`, `attention_with_scales`) and this cache keeps per layer on the
    /// device, so captured graphs read them. New buffers each call: re-capture graphs after it.
    pub fn set_layer_fp8_scales(&mut self, dev: &Device, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        if layer >= self.n_layer {
            return Err(GpuError::shape("kv_cache", format!("layer {layer} of {}", self.n_layer)));
        }
        let mut heads = Vec::with_capacity(2);
        for (which, s) in [("K", k), ("V", v)] {
            if s.len() != 1 && s.len() != self.n_head_kv {
                return Err(GpuError::shape("kv_cache", format!("{} {which} scales for {} KV heads", s.len(), self.n_head_kv)));
            }
            if let Some(bad) = s.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(GpuError::shape("kv_cache", format!("fp8 scale {bad} is not a positive finite number")));
            }
            heads.push((0..self.n_head_kv).map(|h| s[if s.len() == 1 { 0 } else { h }]).collect::<Vec<f32>>());
        }
        self.layer_scales[layer] = Some((dev.upload(&heads[0])?, dev.upload(&heads[1])?));
        Ok(())
    }

    /// fp8 scale arguments of layer `layer` for the kernels: (K, V) per tensor and the device
    /// addresses of the per-KV-head ones (0: none). f16 and q8_0 caches: 1.0 and none.
    fn scale_args(&self, layer: usize) -> (f32, f32, u64, u64) {
        if self.ty != KvType::Fp8E4M3 {
            return (1.0, 1.0, 0, 0);
        }
        let (kp, vp) = self.layer_scales[layer].as_ref().map_or((0, 0), |(k, v)| (k.device_ptr(), v.device_ptr()));
        (self.k_scale, self.v_scale, kp, vp)
    }

    /// Device addresses of layer `layer`'s K and V.
    fn layer_offsets(&self, layer: usize) -> Result<(u64, u64)> {
        if layer >= self.n_layer {
            return Err(GpuError::shape("kv_cache", format!("layer {layer} of {}", self.n_layer)));
        }
        let slots = (layer * self.n_blocks * self.block_size * self.n_head_kv) as u64;
        Ok((
            self.k.device_ptr() + slots * self.ty.row_bytes(self.head_dim_k) as u64,
            self.v.device_ptr() + slots * self.ty.row_bytes(self.head_dim_v) as u64,
        ))
    }
}

/// A block-table entry for a block given back behind a sliding window (the runtime's
/// `NULL_BLOCK`): accepted in tables, never a slot; the attention kernel skips it (it only occurs
/// before every key a query reads).
pub const NULL_BLOCK: u32 = u32::MAX;

/// Per-step attention metadata on the device: query tokens (their sequence and position) and
/// sequences (their block-table offset and cached length). Built once per step.
pub struct AttnBatch {
    pub n_q: usize,
    pub n_seq: usize,
    q_seq: DeviceBuffer<i32>,
    q_pos: DeviceBuffer<i32>,
    seq_len: DeviceBuffer<i32>,
    bt_offset: DeviceBuffer<i32>,
    block_tables: DeviceBuffer<u32>,
}

/// One sequence of an [`AttnBatch`]: its block table, the number of positions cached (after
/// this step's KV write) and the positions of its query tokens in this step.
pub struct AttnSeq<'a> {
    pub block_table: &'a [u32],
    pub seq_len: usize,
    pub q_positions: &'a [usize],
}

impl AttnBatch {
    /// Persistent metadata buffers for up to `max_q` query tokens, `max_seq` sequences and
    /// `max_blocks` block-table entries, refilled each step by [`AttnBatch::fill`] (no allocation
    /// per step, and fixed addresses for graph capture).
    pub fn with_capacity(dev: &Device, max_q: usize, max_seq: usize, max_blocks: usize) -> Result<AttnBatch> {
        Ok(AttnBatch {
            n_q: 0,
            n_seq: 0,
            q_seq: dev.alloc(max_q.max(1))?,
            q_pos: dev.alloc(max_q.max(1))?,
            seq_len: dev.alloc(max_seq.max(1))?,
            bt_offset: dev.alloc(max_seq.max(1))?,
            block_tables: dev.alloc(max_blocks.max(1))?,
        })
    }

    /// Validate the sequences against `cache` and copy their metadata into the buffers (on `s`,
    /// ordered before the kernels that read them). Fails if the step exceeds the capacity.
    pub fn fill(&mut self, s: &Stream, cache: &GpuKvCache, seqs: &[AttnSeq<'_>]) -> Result<()> {
        let h = Self::host_meta(cache, seqs)?;
        let fits = h.q_seq.len() <= self.q_seq.len() && seqs.len() <= self.seq_len.len() && h.bts.len() <= self.block_tables.len();
        if !fits {
            return Err(GpuError::shape(
                "attention",
                format!("{} queries / {} sequences / {} blocks exceed the metadata buffers", h.q_seq.len(), seqs.len(), h.bts.len()),
            ));
        }
        s.copy_to_device(&h.q_seq, &mut *self.q_seq.view(0, h.q_seq.len())?)?;
        s.copy_to_device(&h.q_pos, &mut *self.q_pos.view(0, h.q_pos.len())?)?;
        s.copy_to_device(&h.seq_len, &mut *self.seq_len.view(0, h.seq_len.len())?)?;
        s.copy_to_device(&h.bt_off, &mut *self.bt_offset.view(0, h.bt_off.len())?)?;
        s.copy_to_device(&h.bts, &mut *self.block_tables.view(0, h.bts.len())?)?;
        self.n_q = h.q_seq.len();
        self.n_seq = seqs.len();
        Ok(())
    }

    fn host_meta(cache: &GpuKvCache, seqs: &[AttnSeq<'_>]) -> Result<HostAttnMeta> {
        let mut h = HostAttnMeta::default();
        for (i, s) in seqs.iter().enumerate() {
            let max_pos = s.q_positions.iter().copied().max().unwrap_or(0).max(s.seq_len.saturating_sub(1));
            let need = max_pos / cache.block_size + 1;
            if s.block_table.len() < need {
                return Err(GpuError::shape(
                    "attention",
                    format!("sequence {i}: block table of {} for position {max_pos}", s.block_table.len()),
                ));
            }
            if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= cache.n_blocks && b != NULL_BLOCK) {
                return Err(GpuError::shape("attention", format!("sequence {i}: block {b} of {}", cache.n_blocks)));
            }
            if s.q_positions.iter().any(|&p| p >= s.seq_len) {
                return Err(GpuError::shape("attention", format!("sequence {i}: a query position is not cached (seq_len {})", s.seq_len)));
            }
            h.bt_off.push(h.bts.len() as i32);
            h.bts.extend_from_slice(s.block_table);
            h.seq_len.push(s.seq_len as i32);
            for &p in s.q_positions {
                h.q_seq.push(i as i32);
                h.q_pos.push(p as i32);
            }
        }
        if h.bts.is_empty() {
            h.bts.push(0);
        }
        Ok(h)
    }

    /// Validate the sequences against `cache` and upload the metadata (new buffers).
    pub fn new(dev: &Device, cache: &GpuKvCache, seqs: &[AttnSeq<'_>]) -> Result<AttnBatch> {
        let h = Self::host_meta(cache, seqs)?;
        Ok(AttnBatch {
            n_q: h.q_seq.len(),
            n_seq: seqs.len(),
            q_seq: dev.upload(&h.q_seq)?,
            q_pos: dev.upload(&h.q_pos)?,
            seq_len: dev.upload(&h.seq_len)?,
            bt_offset: dev.upload(&h.bt_off)?,
            block_tables: dev.upload(&h.bts)?,
        })
    }
}

#[derive(Default)]
struct HostAttnMeta {
    q_seq: Vec<i32>,
    q_pos: Vec<i32>,
    seq_len: Vec<i32>,
    bt_off: Vec<i32>,
    bts: Vec<u32>,
}

/// KV cache slots of one step's tokens (`block * block_size + offset`, -1: skip), validated on
/// the host against a cache's size once and uploaded once, then used by every layer's
/// [`Kernels::kv_write_slots`].
pub struct KvSlots {
    buf: DeviceBuffer<i64>,
    n: usize,
    /// `n_blocks * block_size` of the cache the slots were checked against.
    n_slots: usize,
}

impl KvSlots {
    /// Room for `cap` tokens' slots.
    pub fn with_capacity(dev: &Device, cap: usize) -> Result<KvSlots> {
        Ok(KvSlots { buf: dev.alloc(cap.max(1))?, n: 0, n_slots: 0 })
    }

    /// Check `slots` against `cache` and copy them to the device on `s`.
    pub fn fill(&mut self, s: &Stream, cache: &GpuKvCache, slots: &[i64]) -> Result<()> {
        let n_slots = cache.n_blocks * cache.block_size;
        if let Some(bad) = slots.iter().find(|&&x| x >= n_slots as i64 || x < -1) {
            return Err(GpuError::shape("kv_write", format!("slot {bad} outside 0..{n_slots}")));
        }
        if slots.len() > self.buf.len() {
            return Err(GpuError::shape("kv_write", format!("{} slots exceed the buffer of {}", slots.len(), self.buf.len())));
        }
        s.copy_to_device(slots, &mut *self.buf.view(0, slots.len())?)?;
        self.n = slots.len();
        self.n_slots = n_slots;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Attention options (as `rocmforge_cpu::AttnParams`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnConfig {
    /// `None`: 1 / sqrt(head_dim_k).
    pub scale: Option<f32>,
    pub causal: bool,
    pub sliding_window: Option<usize>,
    pub softcap: Option<f32>,
}

impl Default for AttnConfig {
    fn default() -> Self {
        AttnConfig { scale: None, causal: true, sliding_window: None, softcap: None }
    }
}

/// Fewest keys a split-K partition takes (the kernel's `min_chunk` in the runtime): a query with
/// fewer keys than two partitions' worth is never split, and the longest query of a step gets
/// partitions of 256..511 keys.
pub const ATTN_PART_KEYS: usize = 256;
/// Most partitions of one (token, head) (`ATT_MAX_PARTS` in attention.cu).
pub const ATTN_MAX_PARTS: usize = 64;
/// Blocks per multiprocessor a split launch aims for: enough loads in flight to stream the
/// cache at full bandwidth when there are few (sequence, head) pairs.
const ATTN_BLOCKS_PER_SM: usize = 8;

/// Partitions by context length alone: the largest power of two <= `max_keys / ATTN_PART_KEYS`,
/// in 1..=[`ATTN_MAX_PARTS`]. Monotone in `max_keys`, so `min` of two of them is the value for
/// the smaller length (a sliding window).
pub fn attn_key_parts(max_keys: usize) -> usize {
    let p = (max_keys / ATTN_PART_KEYS).clamp(1, ATTN_MAX_PARTS);
    1 << p.ilog2()
}

/// The partition count of one launch: `key_parts` ([`attn_key_parts`]) limited so the launch
/// has about `ATTN_BLOCKS_PER_SM` blocks per multiprocessor over its `n_pairs` (token, head)
/// pairs and its partial states fit `ws_rows` workspace rows; a power of two; 1 = unsplit.
/// A pure function of its arguments: the runtime keys decode graphs by `key_parts`.
pub fn attn_split_parts(key_parts: usize, n_pairs: usize, n_sm: usize, ws_rows: usize) -> usize {
    if key_parts < 2 || n_pairs == 0 {
        return 1;
    }
    let occupancy = (ATTN_BLOCKS_PER_SM * n_sm.max(1)).div_ceil(n_pairs);
    let p = key_parts.min(occupancy).min(ws_rows / n_pairs).min(ATTN_MAX_PARTS);
    if p < 2 {
        1
    } else {
        1 << p.ilog2()
    }
}

/// Workspace rows that always suffice for [`attn_split_parts`] on `n_sm` multiprocessors: a
/// split needs `occupancy >= 2`, so `n_pairs < 8 n_sm` and `n_pairs * n_part < 8 n_sm + n_pairs`.
pub fn attn_workspace_rows(n_sm: usize) -> usize {
    2 * ATTN_BLOCKS_PER_SM * n_sm.max(1)
}

/// Scratch of split-K attention: the partial (max, sum) and unnormalised output of up to `rows`
/// (token, head, partition) triples of head_dim_v up to `max_dv`. Allocated once (its address
/// is baked into captured graphs).
pub struct AttnWorkspace {
    ml: DeviceBuffer<f32>,
    acc: DeviceBuffer<f32>,
    rows: usize,
    max_dv: usize,
}

impl AttnWorkspace {
    pub fn new(dev: &Device, rows: usize, max_dv: usize) -> Result<AttnWorkspace> {
        Ok(AttnWorkspace { ml: dev.alloc((2 * rows).max(1))?, acc: dev.alloc((rows * max_dv).max(1))?, rows, max_dv })
    }

    /// Bytes [`new`](Self::new) allocates.
    pub fn bytes(rows: usize, max_dv: usize) -> usize {
        4 * rows * (2 + max_dv)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// A split-K launch: `n_part` partitions (2..=[`ATTN_MAX_PARTS`]) of at least `min_keys` keys
/// each (the runtime passes [`ATTN_PART_KEYS`]; tests pass small values to make many partitions
/// of short contexts), partial states in `ws`.
pub struct AttnSplit<'a> {
    pub ws: &'a mut AttnWorkspace,
    pub n_part: usize,
    pub min_keys: usize,
}

impl Kernels {
    /// Write K and V of `n_tokens` tokens (`n_tokens x n_head_kv x head_dim`, f32) into layer
    /// `layer` of the cache at `slots[t]` (= block * block_size + offset; -1 skips a token),
    /// converted to the cache's type. Slots are checked on the host (they come from the block
    /// manager, never from the device).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write(
        &self,
        s: &Stream,
        cache: &mut GpuKvCache,
        layer: usize,
        k: &DeviceBuffer<f32>,
        v: &DeviceBuffer<f32>,
        slots: &[i64],
        slot_buf: &mut DeviceBuffer<i64>,
    ) -> Result<()> {
        const OP: &str = "kv_write";
        need(OP, "slot buffer", slot_buf.len(), slots.len())?;
        let n_slots = (cache.n_blocks * cache.block_size) as i64;
        if let Some(bad) = slots.iter().find(|&&x| x >= n_slots || x < -1) {
            return Err(GpuError::shape(OP, format!("slot {bad} outside 0..{n_slots}")));
        }
        s.copy_to_device(slots, slot_buf)?;
        // SAFETY: every slot was checked against this cache's size just above.
        unsafe { self.kv_write_launch(s, cache, layer, k, v, slots.len(), slot_buf) }
    }

    /// [`Kernels::kv_write`] with slots validated and uploaded once per step ([`KvSlots`]).
    pub fn kv_write_slots(
        &self,
        s: &Stream,
        cache: &mut GpuKvCache,
        layer: usize,
        k: &DeviceBuffer<f32>,
        v: &DeviceBuffer<f32>,
        slots: &KvSlots,
    ) -> Result<()> {
        if slots.n_slots != cache.n_blocks * cache.block_size {
            return Err(GpuError::shape("kv_write", "slots were checked against another cache"));
        }
        // SAFETY: KvSlots::fill checked every slot against this cache's size.
        unsafe { self.kv_write_launch(s, cache, layer, k, v, slots.n, &slots.buf) }
    }

    /// # Safety
    /// The first `n` values of `slots` (device) must be -1 or inside `0..n_blocks * block_size`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kv_write_launch(
        &self,
        s: &Stream,
        cache: &GpuKvCache,
        layer: usize,
        k: &DeviceBuffer<f32>,
        v: &DeviceBuffer<f32>,
        n: usize,
        slots: &DeviceBuffer<i64>,
    ) -> Result<()> {
        const OP: &str = "kv_write";
        let (hk, hv) = (cache.n_head_kv * cache.head_dim_k, cache.n_head_kv * cache.head_dim_v);
        need(OP, "k", k.len(), n * hk)?;
        need(OP, "v", v.len(), n * hv)?;
        if slots.len() < n {
            return Err(GpuError::shape(OP, format!("{} slots for {n} tokens", slots.len())));
        }
        let (kp, vp) = cache.layer_offsets(layer)?;
        if n == 0 {
            return Ok(());
        }
        let mut a = KernelArgs::new();
        a.buf(k).buf(v).ptr(kp).ptr(vp).buf(slots);
        match cache.ty {
            KvType::F16 => {
                a.i32(hk as i32).i32(hv as i32);
                // SAFETY: k/v hold n rows (checked); every slot is inside the layer (the
                // caller's contract), so writes stay in the cache buffers.
                unsafe { self.f("kv_write_f16")?.launch(s, (n as u32, 1, 1), (256, 1, 1), 0, &mut a) }
            }
            KvType::Q8_0 => {
                // One thread per 32-value block; the grid must not be clamped (no grid stride).
                let n_blocks = n * (hk + hv) / 32;
                let grid = grid_1d(n_blocks, 128);
                if grid as usize * 128 < n_blocks {
                    return Err(GpuError::shape(OP, format!("{n_blocks} q8_0 blocks in one launch")));
                }
                a.i32(n as i32).i32(hk as i32).i32(hv as i32);
                // SAFETY: as above; threads past n x (hk + hv) / 32 blocks return first.
                unsafe { self.f("kv_write_q8_0")?.launch(s, (grid, 1, 1), (128, 1, 1), 0, &mut a) }
            }
            KvType::Fp8E4M3 => {
                let (ks, vs, kh, vh) = cache.scale_args(layer);
                a.i32(hk as i32).i32(hv as i32).f32(1.0 / ks).f32(1.0 / vs);
                a.i32(cache.head_dim_k as i32).i32(cache.head_dim_v as i32).ptr(kh).ptr(vh);
                // SAFETY: as for f16 (one byte per element); per-head scales hold n_head_kv
                // values (set_layer_fp8_scales) and e / dim < n_head_kv.
                unsafe { self.f("kv_write_fp8")?.launch(s, (n as u32, 1, 1), (256, 1, 1), 0, &mut a) }
            }
        }
    }

    /// Paged attention of the batch's query tokens (`q`: `n_q x n_head x head_dim_k`) over layer
    /// `layer` of the cache; `out`: `n_q x n_head x head_dim_v`. One pass over each query's keys.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        s: &Stream,
        cache: &GpuKvCache,
        layer: usize,
        batch: &AttnBatch,
        q: &DeviceBuffer<f32>,
        n_head: usize,
        cfg: &AttnConfig,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        self.attention_split(s, cache, layer, batch, q, n_head, cfg, None, out)
    }

    /// [`Kernels::attention`], split over the keys when `split` is given (module header): the
    /// same result up to float rounding (the partial states merge exactly as the warps' do).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_split(
        &self,
        s: &Stream,
        cache: &GpuKvCache,
        layer: usize,
        batch: &AttnBatch,
        q: &DeviceBuffer<f32>,
        n_head: usize,
        cfg: &AttnConfig,
        split: Option<AttnSplit<'_>>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "attention";
        let (n_kv, dk, dv) = (cache.n_head_kv, cache.head_dim_k, cache.head_dim_v);
        if n_kv == 0 || n_head == 0 || !n_head.is_multiple_of(n_kv) {
            return Err(GpuError::shape(OP, format!("n_head {n_head} is not a multiple of n_head_kv {n_kv}")));
        }
        // attention.cu: 4 * ATT_GROUPS * W elements per row (GpuKvCache checked multiples of 4).
        let max_dim = 8 * self.warp() as usize;
        if dk > max_dim || dv > max_dim {
            return Err(GpuError::shape(OP, format!("head dims {dk}/{dv} exceed {max_dim}")));
        }
        need(OP, "q", q.len(), batch.n_q * n_head * dk)?;
        need(OP, "out", out.len(), batch.n_q * n_head * dv)?;
        if batch.n_q > 65535 || n_head > 65535 {
            return Err(GpuError::shape(OP, format!("{} query tokens x {n_head} heads exceed one launch's grid", batch.n_q)));
        }
        let (kp, vp) = cache.layer_offsets(layer)?;
        if batch.n_q == 0 {
            return Ok(());
        }
        let scale = cfg.scale.unwrap_or(1.0 / (dk as f32).sqrt());
        let softcap = cfg.softcap.filter(|&c| c > 0.0);
        // llama.cpp's flash-attention order (the CPU's quantized path): scale / softcap, then
        // softcap * tanh; fp8 keys are decoded without their scale, which the kernel multiplies
        // into this one per KV head.
        let qscale = softcap.map_or(scale, |c| scale / c);
        let (k_scale, v_scale, k_heads, v_heads) = cache.scale_args(layer);
        let (n_part, min_chunk, ws) = match split {
            None => (1, 1, None),
            Some(sp) => {
                if !(2..=ATTN_MAX_PARTS).contains(&sp.n_part) {
                    return Err(GpuError::shape(OP, format!("{} partitions (2..={ATTN_MAX_PARTS})", sp.n_part)));
                }
                let rows = batch.n_q * n_head * sp.n_part;
                if rows > sp.ws.rows || dv > sp.ws.max_dv {
                    return Err(GpuError::shape(
                        OP,
                        format!("{rows} partial rows of {dv} exceed the workspace ({} of {})", sp.ws.rows, sp.ws.max_dv),
                    ));
                }
                (sp.n_part, sp.min_keys.clamp(1, i32::MAX as usize), Some(sp.ws))
            }
        };
        let (ml, acc) = ws.as_ref().map_or((0, 0), |w| (w.ml.device_ptr(), w.acc.device_ptr()));
        let name = match cache.ty {
            KvType::F16 => "paged_attention_f16",
            KvType::Q8_0 => "paged_attention_q8_0",
            KvType::Fp8E4M3 => "paged_attention_fp8",
        };
        let mut a = KernelArgs::new();
        a.buf(q)
            .ptr(kp)
            .ptr(vp)
            .buf(out)
            .ptr(ml)
            .ptr(acc)
            .buf(&batch.q_seq)
            .buf(&batch.q_pos)
            .buf(&batch.seq_len)
            .buf(&batch.bt_offset)
            .buf(&batch.block_tables);
        a.i32(n_head as i32).i32(n_kv as i32).i32(dk as i32).i32(dv as i32).i32(cache.block_size as i32);
        a.f32(qscale).f32(softcap.unwrap_or(0.0)).i32(cfg.causal as i32).i32(cfg.sliding_window.map_or(0, |w| w as i32));
        a.f32(k_scale).f32(v_scale).ptr(k_heads).ptr(v_heads).i32(min_chunk as i32);
        let block = (4 * self.warp(), 1, 1);
        // SAFETY: q/out sized for n_q tokens; AttnBatch checked every block id and that the
        // tables cover every position the queries read; per-head scales hold n_head_kv values
        // (set_layer_fp8_scales); with n_part > 1 the workspace holds n_q x n_head x n_part
        // rows of dv (checked), and out is not written.
        unsafe { self.f(name)?.launch(s, (n_head as u32, batch.n_q as u32, n_part as u32), block, 0, &mut a)? };
        if n_part > 1 {
            let mut r = KernelArgs::new();
            r.ptr(ml).ptr(acc).buf(out).i32(n_head as i32).i32(dv as i32).i32(n_part as i32);
            // SAFETY: the workspace rows the first launch wrote (checked above); out holds
            // n_q x n_head x dv values.
            unsafe { self.f("paged_attention_reduce")?.launch(s, (n_head as u32, batch.n_q as u32, 1), block, 0, &mut r)? };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_match_the_cpu_layout() {
        assert_eq!(KvType::F16.row_bytes(64), 128);
        assert_eq!(KvType::Q8_0.row_bytes(64), 68);
        assert_eq!(KvType::Fp8E4M3.row_bytes(64), 64);
        assert_eq!(GpuKvCache::bytes_for(KvType::Q8_0, 2, 3, 64, 128, 16, 5), 2 * 5 * 16 * 3 * (68 + 136));
    }

    #[test]
    fn split_heuristic_is_bounded_and_monotone() {
        // Short contexts are never split; partitions hold 256..511 keys of the longest query.
        assert_eq!(attn_key_parts(0), 1);
        assert_eq!(attn_key_parts(511), 1);
        assert_eq!(attn_key_parts(512), 2);
        assert_eq!(attn_key_parts(5000), 16);
        assert_eq!(attn_key_parts(1 << 30), ATTN_MAX_PARTS);
        let mut last = 1;
        for keys in (0..100_000).step_by(97) {
            let p = attn_key_parts(keys);
            assert!(p >= last && p.is_power_of_two(), "{keys}: {p}");
            if p > 1 {
                assert!((ATTN_PART_KEYS..2 * ATTN_PART_KEYS).contains(&(keys / p)) || p == ATTN_MAX_PARTS, "{keys}: {p}");
            }
            last = p;
        }
        // A batch of one sequence with 9 heads on 132 SMs, 5000 keys: 16 partitions.
        assert_eq!(attn_split_parts(16, 9, 132, attn_workspace_rows(132)), 16);
        // Enough pairs to fill the device: no split.
        assert_eq!(attn_split_parts(64, 8 * 132, 132, attn_workspace_rows(132)), 1);
        // The workspace always suffices when sized by attn_workspace_rows.
        for n_sm in [1, 7, 80, 132, 304] {
            let rows = attn_workspace_rows(n_sm);
            for n_pairs in 1..3000 {
                for kp in [1, 2, 4, 8, 16, 32, 64] {
                    let p = attn_split_parts(kp, n_pairs, n_sm, usize::MAX);
                    assert!(p == 1 || n_pairs * p <= rows, "n_sm {n_sm} pairs {n_pairs} kp {kp}: {p}");
                    assert!(p <= kp.max(1) && p.is_power_of_two());
                }
            }
        }
    }
}
