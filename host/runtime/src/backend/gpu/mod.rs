//! The GPU backend: runs a [`Plan`] with the kernels of `rocmforge_gpu` (CUDA or HIP, chosen at
//! run time) on one stream.
//!
//! Memory, all allocated once in [`GpuBackend::new`], so device pointers never move (what graph
//! capture will need):
//! - weights, uploaded once in the forms the ops read them (`weights.rs`);
//! - the activation arena: `peak_cols × row_cap` f32 with `row_cap = next_pow2(max_batch_tokens)`;
//!   node `i` of a batch of `n` tokens is the contiguous `[rows, cols_i]` matrix at
//!   `col_off_i × stride`, `stride = next_pow2(n)` (the CPU backend's layout; see `plan.rs`), so
//!   the plan's disjointness of live column ranges carries over unchanged;
//! - the paged KV cache of f16, q8_0 or fp8 E4M3 elements (`rocmforge_gpu::GpuKvCache`, the CPU
//!   cache's layout and numerics, one layer plane per slot of the KV layout: `kv_layout.rs`);
//! - the split-K attention workspace (`rocmforge_gpu::AttnWorkspace`, sized by the device's
//!   multiprocessor count);
//! - per-step metadata buffers (token ids, positions, KV slots, attention tables, output rows),
//!   refilled by small host-to-device copies at the start of each step; they grow (reallocate)
//!   only if a step has more sequences or block-table entries than any before.
//!
//! Decode steps (one token per sequence) replay a CUDA/HIP graph captured once per token count
//! and split-K bucket (the attention's partition count by context length, a power of two, see
//! `graph_key`): every per-step value the kernels read lives in the step buffers, so a replay
//! only needs the small uploads before it (`ROCMFORGE_GPU_GRAPHS=0` turns graphs off,
//! `ROCMFORGE_ATTN_SPLIT=0` split-K; a failed capture falls back to eager launches with one
//! warning).
//!
//! Only the output rows come back to the host, once per forward. A batch larger than the arena
//! is refused (the engine's token budget sizes it), never silently reallocated.
//!
//! Ops: every op of the graph IR except the MoE ones, attention sinks and ROPE's exact YaRN
//! range (gpt-oss), refused at load with [`RuntimeError::Unsupported`] naming the node.

mod weights;

use rocmforge_gpu::{
    attn_key_parts, attn_split_parts, attn_workspace_rows, AttnBatch, AttnConfig, AttnSeq, AttnSplit, AttnWorkspace, Device, DeviceBuffer,
    DeviceView, GemmScratch, Glu, GpuError, GpuKvCache, GraphExec, Kernels, KvSlots, KvType, QuantActs, RopeConfig, Stream, Unary,
    ATTN_PART_KEYS, GEMM_CHUNK_VALUES,
};
use std::collections::HashMap;

use self::weights::GpuWeight;
use super::Backend;
use crate::batch::BatchMeta;
use crate::dump::Dump;
use crate::exec::{KvCacheType, KvConfig};
use crate::graph::{Graph, Op, PoolMode, RowSrc, Rows, Shape};
use crate::kv_layout::KvLayout;
use crate::kv_scales::KvScales;
use crate::plan::{Plan, Step};
use crate::source::ModelSource;
use crate::RuntimeError;

/// Per-step metadata on the device (see the module header).
struct StepBufs {
    tokens: DeviceBuffer<u32>,
    positions: DeviceBuffer<i32>,
    /// Positions as table row ids (GET_ROWS of positions, encoders) or a constant row id.
    row_ids: DeviceBuffer<u32>,
    out_ids: DeviceBuffer<u32>,
    pool_meta: DeviceBuffer<i32>,
    /// Per KV group: the KV write slots of the step's tokens and the attention tables.
    slots: Vec<KvSlots>,
    attn: Vec<AttnBatch>,
    /// Capacity of each `attn` in sequences and block-table entries.
    attn_cap: (usize, usize),
}

pub struct GpuBackend {
    dev: Device,
    k: Kernels,
    stream: Stream,
    weights: Vec<Option<GpuWeight>>,
    arena: DeviceBuffer<f32>,
    row_cap: usize,
    kv: GpuKvCache,
    kv_cfg: KvConfig,
    layout: KvLayout,
    acts: QuantActs,
    step: StepBufs,
    /// The output rows of the last forward, in host memory.
    out: Vec<f32>,
    /// Row argmaxes of the last `forward_argmax` (device scratch and host copy).
    argmax_ids: DeviceBuffer<u32>,
    out_ids: Vec<u32>,
    /// Decode steps replay a graph captured once per (token count, split-K bucket) (see
    /// `graph_key`).
    use_graphs: bool,
    /// The graph reads only per-step data that lives in the step buffers (no ids built per op):
    /// no GET_ROWS of positions or constants, no POOL.
    capturable: bool,
    graphs: HashMap<(usize, usize), GraphExec>,
    /// Split-K attention (`rocmforge_gpu::attn_split_parts`): its workspace, sized once at load
    /// for this device's multiprocessor count; `key_parts` is this step's partition count by
    /// context length (1: no split; always 1 with `ROCMFORGE_ATTN_SPLIT=0`).
    attn_ws: AttnWorkspace,
    n_sm: usize,
    attn_split: bool,
    key_parts: usize,
    /// Matrix products of at least `gemm_min_tokens` tokens (prefill chunks) go through the
    /// vendor GEMM on f16 copies (`rocmforge_gpu::GemmScratch`); `None` when the BLAS library
    /// is missing or the token budget never reaches the threshold.
    gemm: Option<GemmScratch>,
    gemm_min_tokens: usize,
}

/// Token count from which a matrix product uses the GEMM path rather than the matrix-vector
/// kernels (`ROCMFORGE_GEMM_MIN_TOKENS` overrides; 0 turns the GEMM off).
const GEMM_MIN_TOKENS: usize = 32;

/// A kernel wrapper's error at graph node `node`; a lost device stays a typed
/// [`RuntimeError::Gpu`] (`GpuError::DeviceLost`), so the engine can tell it from a bad node.
fn kernel_err(node: &str, e: GpuError) -> RuntimeError {
    if e.is_device_lost() {
        RuntimeError::Gpu(e)
    } else {
        RuntimeError::Kernel { node: node.to_string(), what: e.to_string() }
    }
}

fn unsupported(node: &str, op: &str) -> RuntimeError {
    RuntimeError::Unsupported { node: node.to_string(), op: op.to_string(), backend: "GPU".into() }
}

/// The first node of `g` this backend has no kernel for (an op, or an appended parameter of one),
/// as the error [`GpuBackend::new`] refuses the graph with, so `--device auto` runs the model on
/// the CPU instead of computing something else on the GPU. Needs no device (tests call it).
pub fn unsupported_op(g: &Graph) -> Option<RuntimeError> {
    g.nodes.iter().find_map(|node| {
        let name = match &node.op {
            Op::MoeRoute { .. } => "MOE_ROUTE",
            Op::MoeGateUp { .. } => "MOE_GATE_UP",
            Op::MoeDown { .. } => "MOE_DOWN",
            Op::Attention { p, .. } if p.sinks.is_some() => "ATTENTION with sinks",
            Op::Rope { p, .. } if p.yarn_exact && p.ext_factor != 0.0 => "ROPE with an exact YaRN correction range",
            Op::Attention { p, .. } if p.v_in_k => "LATENT_ATTENTION",
            Op::HeadMatMul { .. } => "HEAD_MATMUL",
            Op::HeadView { .. } => "VIEW with a head width",
            Op::Concat { .. } => "CONCAT",
            _ => return None,
        };
        Some(unsupported(&node.name, name))
    })
}

impl GpuBackend {
    /// Upload the graph's weights to `dev`, compile (or load from the disk cache) the kernels,
    /// and allocate the KV cache, the arena for batches of up to `max_batch_tokens` tokens and the
    /// per-step buffers. Refuses graphs with ops the GPU lacks and models that do not fit the
    /// device's free memory (with both numbers). The KV cache stores `kv_type` elements (f16,
    /// q8_0 or fp8 E4M3, as the CPU backend's cache).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: Device,
        g: &Graph,
        p: &Plan,
        src: &ModelSource,
        kv_cfg: KvConfig,
        layout: &KvLayout,
        kv_type: KvCacheType,
        max_batch_tokens: usize,
    ) -> Result<GpuBackend, RuntimeError> {
        let kv_ty = match kv_type {
            KvCacheType::F16 => KvType::F16,
            KvCacheType::Q8_0 => KvType::Q8_0,
            KvCacheType::Fp8E4M3 => KvType::Fp8E4M3,
        };
        if let Some(e) = unsupported_op(g) {
            return Err(e);
        }
        let geo = g
            .layers
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| RuntimeError::Graph { node: "graph".into(), what: "no attention layer".into() })?;
        if g.layers.iter().any(|l| !l.is_some_and(|l| l.same_geometry(&geo))) {
            return Err(RuntimeError::Graph {
                node: "graph".into(),
                what: "layers with different KV geometry are not supported yet".into(),
            });
        }
        let row_cap = max_batch_tokens.max(1).next_power_of_two().max(8);
        // Largest k of any matrix product: the int8 activation scratch holds row_cap rows of it.
        let max_k = g
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::MatMul { w, .. } => g.weight_dims(w).map(|d| d[0]),
                _ => None,
            })
            .max()
            .unwrap_or(32);

        // Refuse up front what cannot fit, with the numbers (rather than failing half-way).
        let w_bytes = weights::device_bytes(g, p, src);
        let kv_bytes = GpuKvCache::bytes_for(
            kv_ty,
            layout.n_slots(),
            geo.n_head_kv,
            geo.head_dim_k,
            geo.head_dim_v,
            kv_cfg.block_size,
            kv_cfg.n_blocks,
        );
        let arena_bytes = p.peak_cols * row_cap * 4;
        let gemm_min_tokens = std::env::var("ROCMFORGE_GEMM_MIN_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(GEMM_MIN_TOKENS);
        let want_gemm = gemm_min_tokens > 0 && max_batch_tokens >= gemm_min_tokens;
        let gemm_bytes = if want_gemm { (row_cap * max_k + GEMM_CHUNK_VALUES.max(max_k)) * 2 } else { 0 };
        let n_sm = dev.info().multiprocessors.max(1) as usize;
        let ws_rows = attn_workspace_rows(n_sm);
        let scratch = row_cap * max_k.div_ceil(32) * 32 * 3 / 2 + gemm_bytes + AttnWorkspace::bytes(ws_rows, geo.head_dim_v);
        let need = w_bytes + kv_bytes + arena_bytes + scratch;
        let (free, _total) = dev.memory()?;
        if need > free {
            return Err(RuntimeError::DeviceMemory {
                need,
                free,
                what: format!("weights {w_bytes}, KV cache {kv_bytes}, activations {arena_bytes}, scratch {scratch}"),
            });
        }

        let k = Kernels::new(&dev)?;
        let stream = dev.new_stream()?;
        let weights = weights::upload(&dev, g, p, src)?;
        let kv = GpuKvCache::with_type(
            &dev,
            kv_ty,
            layout.n_slots(),
            geo.n_head_kv,
            geo.head_dim_k,
            geo.head_dim_v,
            kv_cfg.block_size,
            kv_cfg.n_blocks,
        )
        .map_err(|e| RuntimeError::KvCache(e.to_string()))?;
        let attn_ws = AttnWorkspace::new(&dev, ws_rows, geo.head_dim_v)?;
        let attn_split = std::env::var("ROCMFORGE_ATTN_SPLIT").map_or(true, |v| v != "0");
        let arena = dev.alloc::<f32>((p.peak_cols * row_cap).max(1))?;
        let acts = QuantActs::new(&dev, row_cap * max_k.div_ceil(32) * 32)?;
        let attn_cap = (row_cap, kv_cfg.n_blocks.max(row_cap));
        let step = StepBufs {
            tokens: dev.alloc(row_cap)?,
            positions: dev.alloc(row_cap)?,
            row_ids: dev.alloc(row_cap)?,
            out_ids: dev.alloc(row_cap)?,
            pool_meta: dev.alloc(2 * row_cap)?,
            slots: (0..layout.n_groups()).map(|_| KvSlots::with_capacity(&dev, row_cap)).collect::<Result<_, _>>()?,
            attn: (0..layout.n_groups())
                .map(|_| AttnBatch::with_capacity(&dev, row_cap, attn_cap.0, attn_cap.1))
                .collect::<Result<_, _>>()?,
            attn_cap,
        };
        tracing::info!(
            "GPU backend on {}: weights {:.1} MiB, KV {:.1} MiB ({}), arena {:.1} MiB ({} tokens)",
            dev.info(),
            w_bytes as f64 / 1048576.0,
            kv_bytes as f64 / 1048576.0,
            kv_ty.name(),
            arena_bytes as f64 / 1048576.0,
            row_cap
        );
        let capturable = g.nodes.iter().all(|n| match n.op {
            Op::GetRows { src, .. } => src == RowSrc::Tokens,
            Op::Pool { .. } => false,
            _ => true,
        });
        let use_graphs = std::env::var("ROCMFORGE_GPU_GRAPHS").map_or(true, |v| v != "0");
        let gemm = if want_gemm {
            match GemmScratch::new(&stream, row_cap, max_k, GEMM_CHUNK_VALUES) {
                Ok(sc) => {
                    tracing::info!("GPU: prefill products of >= {gemm_min_tokens} tokens through {}", sc.library());
                    Some(sc)
                }
                Err(e) => {
                    tracing::warn!("GPU: no vendor BLAS ({e}); prefill uses the matrix-vector kernels (slower)");
                    None
                }
            }
        } else {
            None
        };
        let argmax_ids = dev.alloc(row_cap)?;
        Ok(GpuBackend {
            dev,
            k,
            stream,
            weights,
            arena,
            row_cap,
            kv,
            kv_cfg,
            layout: layout.clone(),
            acts,
            step,
            out: Vec::new(),
            argmax_ids,
            out_ids: Vec::new(),
            use_graphs,
            capturable,
            graphs: HashMap::new(),
            gemm,
            gemm_min_tokens,
            attn_ws,
            n_sm,
            attn_split,
            key_parts: 1,
        })
    }

    /// Copy this step's metadata to the device: token ids, positions, KV slots and the
    /// attention tables.
    fn upload_step(&mut self, b: &BatchMeta) -> Result<(), RuntimeError> {
        let n = b.n_tokens();
        let s = &self.stream;
        let st = &mut self.step;
        s.copy_to_device(&b.tokens, &mut *st.tokens.view(0, n)?)?;
        s.copy_to_device(&b.positions, &mut *st.positions.view(0, n)?)?;
        let bs = self.kv_cfg.block_size;
        let q_pos: Vec<Vec<usize>> = b.seqs.iter().map(|c| (c.pos_start..c.pos_start + c.len).collect()).collect();
        let want = (b.n_seqs(), b.block_tables[0].len().max(1));
        if want.0 > st.attn_cap.0 || want.1 > st.attn_cap.1 {
            // Rare (prefix-shared tables, many sequences): grow, keeping powers of two.
            st.attn_cap = (want.0.max(st.attn_cap.0).next_power_of_two(), want.1.max(st.attn_cap.1).next_power_of_two());
            for a in st.attn.iter_mut() {
                *a = AttnBatch::with_capacity(&self.dev, self.row_cap, st.attn_cap.0, st.attn_cap.1)?;
            }
            // Captured graphs hold the old buffers' addresses.
            self.graphs.clear();
        }
        // One set of write slots and attention tables per KV group (every group's table covers
        // the same positions; a sliding group's entries behind its window are NULL_BLOCK, never
        // written: the step writes only its own positions).
        for (grp, (slots_buf, attn)) in st.slots.iter_mut().zip(st.attn.iter_mut()).enumerate() {
            let mut slots = Vec::with_capacity(n);
            for (i, pos) in q_pos.iter().enumerate() {
                let table = b.block_table(grp, i);
                slots.extend(pos.iter().map(|&p| (table[p / bs] as usize * bs + p % bs) as i64));
            }
            slots_buf.fill(s, &self.kv, &slots)?;
            let seqs: Vec<AttnSeq> = b
                .seqs
                .iter()
                .enumerate()
                .map(|(i, c)| AttnSeq { block_table: b.block_table(grp, i), seq_len: c.pos_start + c.len, q_positions: &q_pos[i] })
                .collect();
            attn.fill(s, &self.kv, &seqs)?;
        }
        let out_ids: Vec<u32> = b.out_ids.iter().map(|&i| i as u32).collect();
        s.copy_to_device(&out_ids, &mut *st.out_ids.view(0, out_ids.len())?)?;
        Ok(())
    }
}

/// Views of the arena for one batch: node `j` is `[rows_of(j), cols_j]` at `col_off_j × stride`.
struct ArenaViews<'a> {
    arena: &'a DeviceBuffer<f32>,
    stride: usize,
    g: &'a Graph,
    p: &'a Plan,
    rows: [usize; 3],
}

impl<'a> ArenaViews<'a> {
    fn rows(&self, r: Rows) -> usize {
        match r {
            Rows::Tokens => self.rows[0],
            Rows::Outputs => self.rows[1],
            Rows::Seqs => self.rows[2],
        }
    }

    /// (rows, cols) of activation node `j`.
    fn shape(&self, j: usize) -> (usize, usize) {
        match self.g.nodes[j].shape {
            Shape::Act { rows, cols } => (self.rows(rows), cols),
            Shape::Weight(_) => unreachable!("graph validated: node {j} is an activation"),
        }
    }

    fn get(&self, j: usize) -> Result<DeviceView<'a, f32>, GpuError> {
        let (r, c) = self.shape(j);
        self.arena.view(self.p.col_off[j] * self.stride, r * c)
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        format!("GPU ({})", self.dev.info())
    }

    fn kv_config(&self) -> KvConfig {
        self.kv_cfg
    }

    /// fp8 scales per layer (per tensor or per KV head), kept on the device by the cache
    /// (`GpuKvCache::set_layer_fp8_scales`); the kernels read them as the CPU's
    /// `write_scaled` / `attention_with_scales` do. Captured graphs hold the old scale
    /// addresses, so they are dropped (re-captured at the next decode step).
    fn set_kv_scales(&mut self, scales: &KvScales) -> Result<(), RuntimeError> {
        for (il, hs) in scales.layers.iter().enumerate() {
            let Some(hs) = hs else { continue };
            let Some((_, slot)) = self.layout.place(il) else {
                return Err(RuntimeError::KvCache(format!("fp8 scales for layer {il}, which has no KV cache")));
            };
            self.kv.set_layer_fp8_scales(&self.dev, slot, &hs.k, &hs.v).map_err(|e| RuntimeError::KvCache(e.to_string()))?;
        }
        self.graphs.clear();
        Ok(())
    }

    fn forward(&mut self, g: &Graph, p: &Plan, b: &BatchMeta, dump: Option<&Dump>) -> Result<&[f32], RuntimeError> {
        let Some(stride) = self.run(g, p, b, dump)? else { return Ok(&[]) };
        let Some(o) = g.output else { return Ok(&[]) };
        let av = ArenaViews { arena: &self.arena, stride, g, p, rows: [b.n_tokens(), b.n_outputs(), b.n_seqs()] };
        let (r, c) = av.shape(o);
        self.out.resize(r * c, 0.0);
        // Waits for the stream: the one synchronisation of a step.
        self.stream.copy_to_host(&*av.get(o)?, &mut self.out)?;
        Ok(&self.out)
    }

    fn forward_argmax(&mut self, g: &Graph, p: &Plan, b: &BatchMeta) -> Result<Option<&[u32]>, RuntimeError> {
        let Some(o) = g.output else { return Ok(None) };
        let Some(stride) = self.run(g, p, b, None)? else { return Ok(Some(&[])) };
        let av = ArenaViews { arena: &self.arena, stride, g, p, rows: [b.n_tokens(), b.n_outputs(), b.n_seqs()] };
        let (r, _) = av.shape(o);
        let kerr = |e: GpuError| kernel_err("argmax", e);
        self.k.argmax(&self.stream, &*av.get(o)?, r, &mut *self.argmax_ids.view(0, r)?).map_err(kerr)?;
        self.out_ids.resize(r, 0);
        self.stream.copy_to_host(&*self.argmax_ids.view(0, r)?, &mut self.out_ids)?;
        Ok(Some(&self.out_ids))
    }
}

impl GpuBackend {
    /// Upload the step and queue its launches (replaying a captured graph for decode steps);
    /// returns the arena stride of the batch, or None for an empty batch. Does not wait.
    fn run(&mut self, g: &Graph, p: &Plan, b: &BatchMeta, dump: Option<&Dump>) -> Result<Option<usize>, RuntimeError> {
        let (n_tokens, n_seqs) = (b.n_tokens(), b.n_seqs());
        if n_tokens == 0 {
            return Ok(None);
        }
        if n_tokens.max(n_seqs) > self.row_cap {
            return Err(RuntimeError::Batch(format!(
                "{} tokens exceed the GPU arena of {} rows (raise max_batch_tokens)",
                n_tokens.max(n_seqs),
                self.row_cap
            )));
        }
        self.upload_step(b)?;
        // Split-K partitions by the longest context of the step (read on the host, once per
        // step; every launch's partition count follows from it and graph-static values).
        let max_ctx = b.seqs.iter().map(|c| c.pos_start + c.len).max().unwrap_or(0);
        self.key_parts = if self.attn_split { attn_key_parts(max_ctx) } else { 1 };
        let stride = n_tokens.max(n_seqs).next_power_of_two().max(8).min(self.row_cap);
        match self.graph_key(b, dump) {
            Some(key) => {
                if !self.graphs.contains_key(&key) {
                    if let Err(e) = self.capture(key, g, p, b, stride) {
                        // Correctness does not depend on graphs: say why once and run eagerly.
                        tracing::warn!("GPU: graph capture failed, running without graphs: {e}");
                        self.use_graphs = false;
                    }
                }
                match self.graphs.get(&key) {
                    Some(exec) => exec.launch(&self.stream)?,
                    None => self.enqueue(g, p, b, dump, stride)?,
                }
            }
            None => self.enqueue(g, p, b, dump, stride)?,
        }
        Ok(Some(stride))
    }

    /// Decode steps (one token per sequence, its logits wanted) of a capturable graph replay a
    /// graph captured for their token count and split-K bucket (`key_parts`): every per-step
    /// value they read (ids, positions, slots, attention tables with the context lengths, output
    /// rows) is in the step buffers, and every launch's shape depends on the token count and
    /// `key_parts` alone (the attention partition count is `attn_split_parts` of those and of
    /// values fixed at load), so a context that grows within a bucket replays the same graph.
    fn graph_key(&self, b: &BatchMeta, dump: Option<&Dump>) -> Option<(usize, usize)> {
        let decode = b.seqs.iter().all(|c| c.len == 1) && b.n_outputs() == b.n_tokens();
        (self.use_graphs && self.capturable && dump.is_none() && decode).then_some((b.n_tokens(), self.key_parts))
    }

    /// Capture the plan's launches for `key` (tokens, split bucket) into a graph (nothing runs
    /// while capturing).
    fn capture(&mut self, key: (usize, usize), g: &Graph, p: &Plan, b: &BatchMeta, stride: usize) -> Result<(), RuntimeError> {
        self.stream.begin_capture()?;
        let r = self.enqueue(g, p, b, None, stride);
        let graph = self.stream.end_capture();
        r?;
        let exec = graph?.instantiate()?;
        self.graphs.insert(key, exec);
        Ok(())
    }

    /// Queue every step of the plan on the stream (the step's metadata already uploaded).
    fn enqueue(&mut self, g: &Graph, p: &Plan, b: &BatchMeta, dump: Option<&Dump>, stride: usize) -> Result<(), RuntimeError> {
        let (n_tokens, n_outputs, n_seqs) = (b.n_tokens(), b.n_outputs(), b.n_seqs());
        let GpuBackend { k, stream: s, weights, arena, kv, layout, acts, step, gemm, gemm_min_tokens, attn_ws, n_sm, key_parts, .. } = self;
        let use_gemm = |rows: usize| rows >= *gemm_min_tokens;
        let av = ArenaViews { arena, stride, g, p, rows: [n_tokens, n_outputs, n_seqs] };
        let wt = |i: usize| weights[i].as_ref().expect("graph validated: weight node");
        let wvec = |i: usize| wt(i).vec.as_ref().expect("planned: element-wise weights have an f32 copy");

        // Does step `idx`'s output (node `i`, `rows` x `cols`) feed the next step as the input
        // of quantized matrix-vector products only? Then the op producing it quantizes it in
        // the same launch (`rocmforge_gpu::fused`) and that step skips quantize_q8.
        let has_gemm = gemm.is_some();
        let feeds_q8 = |idx: usize, i: usize, rows: usize, cols: usize| -> bool {
            if use_gemm(rows) && has_gemm || !cols.is_multiple_of(32) {
                return false;
            }
            let quantized = |j: usize| match g.nodes[j].op {
                Op::MatMul { x, w, .. } => x == i && wt(w).mat.as_ref().is_some_and(|m| m.quantized_input()),
                _ => false,
            };
            match p.steps.get(idx + 1) {
                Some(Step::MatMulGroup(grp)) => grp.iter().all(|&j| quantized(j)),
                Some(Step::Node(j)) => quantized(*j),
                None => false,
            }
        };
        // The node whose quantization `acts` holds, for the step right after the one that made it.
        let mut pre_q: Option<usize> = None;

        for (idx, st) in p.steps.iter().enumerate() {
            let fused_in = pre_q.take();
            let lead = st.nodes()[0];
            let node = &g.nodes[lead];
            let kerr = |e: GpuError| kernel_err(&node.name, e);
            if let Step::MatMulGroup(group) = st {
                let Op::MatMul { x, w, .. } = node.op else { unreachable!("plan: a group of MATMULs") };
                let (rows, kdim) = av.shape(x);
                let xv = av.get(x).map_err(kerr)?;
                // Quantize the shared input once for every quantized matrix of the group
                // (Q/K/V, gate/up); F16 matrices read the f32 input directly.
                let all_q = group.iter().all(|&j| match g.nodes[j].op {
                    Op::MatMul { w, .. } => wt(w).mat.as_ref().is_some_and(|m| m.quantized_input()),
                    _ => false,
                });
                let _ = w;
                let mut sc = gemm.as_mut().filter(|_| use_gemm(rows));
                if let Some(sc) = sc.as_deref_mut() {
                    k.gemm_input(s, &xv, rows, kdim, sc).map_err(kerr)?;
                } else if all_q && fused_in != Some(x) {
                    k.quantize_q8(s, &xv, rows, kdim, acts).map_err(kerr)?;
                }
                let mat = |j: usize| match g.nodes[j].op {
                    Op::MatMul { w, .. } => wt(w).mat.as_ref().expect("uploaded: matrix"),
                    _ => unreachable!("plan: a group of MATMULs"),
                };
                // Matrix-vector path: runs of up to three matrices of one type share a launch.
                let mut done = 0;
                while sc.is_none() && all_q && done < group.len() {
                    let ty = mat(group[done]).ty;
                    let run = group[done..].iter().take(3).take_while(|&&j| mat(j).ty == ty).count();
                    let js = &group[done..done + run];
                    if run >= 2 {
                        let mut views = js.iter().map(|&j| av.get(j)).collect::<Result<Vec<_>, _>>().map_err(kerr)?;
                        let mut ys: Vec<&mut DeviceBuffer<f32>> = views.iter_mut().map(|v| &mut **v).collect();
                        let ws: Vec<&rocmforge_gpu::GpuMatrix> = js.iter().map(|&j| mat(j)).collect();
                        k.matmul_quantized_multi(s, &ws, acts, rows, &mut ys).map_err(kerr)?;
                    } else {
                        k.matmul_quantized(s, mat(js[0]), acts, rows, &mut *av.get(js[0]).map_err(kerr)?).map_err(kerr)?;
                    }
                    done += run;
                }
                for &j in group {
                    let Op::MatMul { bias, .. } = g.nodes[j].op else { unreachable!("plan: a group of MATMULs") };
                    let m = mat(j);
                    let mut y = av.get(j).map_err(kerr)?;
                    match sc.as_deref_mut() {
                        Some(sc) => k.gemm(s, m, sc, &mut y).map_err(kerr)?,
                        None if all_q => {} // done above
                        None => k.matmul(s, m, &xv, rows, acts, &mut y).map_err(kerr)?,
                    }
                    if let Some(bi) = bias {
                        let a = av.get(j).map_err(kerr)?;
                        k.add(s, &a, wvec(bi), &mut y).map_err(kerr)?;
                    }
                }
            } else {
                let i = lead;
                let Shape::Act { cols, .. } = node.shape else { continue };
                let (rows, _) = av.shape(i);
                let mut out = av.get(i).map_err(kerr)?;
                let act = |j: usize| av.get(j).map_err(kerr);
                match &node.op {
                    Op::Weight { .. } => {}
                    Op::MoeRoute { .. } | Op::MoeGateUp { .. } | Op::MoeDown { .. } => return Err(unsupported(&node.name, "MoE")),
                    // Refused in `new` (no kernels yet): MLA's per-head ops.
                    Op::HeadMatMul { .. } | Op::HeadView { .. } | Op::Concat { .. } => return Err(unsupported(&node.name, "per-head op")),
                    Op::GetRows { table, src } => {
                        let (ty, bytes) = wt(*table).table.as_ref().expect("uploaded: table");
                        let ids = match src {
                            RowSrc::Tokens => step.tokens.view(0, n_tokens)?,
                            RowSrc::Positions => {
                                let n_rows = g.weight_dims(*table).and_then(|d| d.get(1).copied()).unwrap_or(0);
                                if let Some(&pp) = b.positions.iter().find(|&&pp| pp as usize >= n_rows) {
                                    return Err(RuntimeError::Batch(format!(
                                        "{}: position {pp} beyond the {n_rows} positions the model has",
                                        node.name
                                    )));
                                }
                                let ids: Vec<u32> = b.positions.iter().map(|&pp| pp as u32).collect();
                                let mut v = step.row_ids.view(0, n_tokens)?;
                                s.copy_to_device(&ids, &mut v)?;
                                v
                            }
                            RowSrc::Constant(id) => {
                                let mut v = step.row_ids.view(0, n_tokens)?;
                                s.fill_u32(&mut v, *id)?;
                                v
                            }
                        };
                        k.get_rows(s, *ty, bytes, cols, &ids, &mut out).map_err(kerr)?;
                    }
                    Op::RmsNorm { x, w, eps, group } => {
                        let len = if *group == 0 { cols } else { *group };
                        if len == cols && feeds_q8(idx, i, rows, cols) {
                            k.rms_norm_q8(s, &*act(*x)?, w.map(wvec), *eps, len, &mut out, acts).map_err(kerr)?;
                            pre_q = Some(i);
                        } else {
                            k.rms_norm(s, &*act(*x)?, w.map(wvec), *eps, len, &mut out).map_err(kerr)?;
                        }
                    }
                    Op::LayerNorm { x, w, b: bias, eps } => {
                        k.layer_norm(s, &*act(*x)?, w.map(wvec), bias.map(wvec), *eps, cols, &mut out).map_err(kerr)?;
                    }
                    Op::MatMul { x, w, bias } => {
                        let m = wt(*w).mat.as_ref().expect("uploaded: matrix");
                        match gemm.as_mut().filter(|_| use_gemm(rows)) {
                            Some(sc) => {
                                k.gemm_input(s, &*act(*x)?, rows, m.k, sc).map_err(kerr)?;
                                k.gemm(s, m, sc, &mut out).map_err(kerr)?;
                            }
                            None if fused_in == Some(*x) => k.matmul_quantized(s, m, acts, rows, &mut out).map_err(kerr)?,
                            None => k.matmul(s, m, &*act(*x)?, rows, acts, &mut out).map_err(kerr)?,
                        }
                        if let Some(bi) = bias {
                            k.add(s, &*act(i)?, wvec(*bi), &mut out).map_err(kerr)?;
                        }
                    }
                    Op::Add { a, b: bb } | Op::Mul { a, b: bb } => {
                        let mul = matches!(node.op, Op::Mul { .. });
                        let av_a = act(*a)?;
                        match g.nodes[*bb].shape {
                            Shape::Weight(_) => {
                                let bv = wvec(*bb);
                                if mul { k.mul(s, &av_a, bv, &mut out) } else { k.add(s, &av_a, bv, &mut out) }.map_err(kerr)?
                            }
                            // [rows, 1]: one value per row (a per-token gate), decided by shape
                            // as on the CPU.
                            Shape::Act { cols: 1, .. } if cols != 1 => {
                                k.binary_rows(s, mul, &av_a, &*act(*bb)?, cols, &mut out).map_err(kerr)?
                            }
                            Shape::Act { .. } => {
                                let bv = act(*bb)?;
                                if mul { k.mul(s, &av_a, &bv, &mut out) } else { k.add(s, &av_a, &bv, &mut out) }.map_err(kerr)?
                            }
                        }
                    }
                    Op::Scale { x, s: v } => k.scale(s, &*act(*x)?, *v, &mut out).map_err(kerr)?,
                    Op::Rope { x, freq_factors, p: rp } => {
                        let cfg = RopeConfig {
                            n_rot: rp.n_rot,
                            neox: rp.neox,
                            freq_base: rp.freq_base,
                            freq_scale: rp.freq_scale,
                            ext_factor: rp.ext_factor,
                            attn_factor: rp.attn_factor,
                            beta_fast: rp.beta_fast,
                            beta_slow: rp.beta_slow,
                            n_ctx_orig: rp.n_ctx_orig,
                        };
                        k.rope_into(s, &*act(*x)?, &mut out, rows, rp.n_head, rp.head_dim, &step.positions, &cfg, freq_factors.map(wvec))
                            .map_err(kerr)?;
                    }
                    Op::Attention { q, k: kk, v, p: ap } => {
                        let (grp, slot) = layout.place(ap.layer).expect("graph validated: the layer has attention");
                        k.kv_write_slots(s, kv, slot, &*act(*kk)?, &*act(*v)?, &step.slots[grp]).map_err(kerr)?;
                        let cfg = AttnConfig {
                            scale: (ap.scale != 0.0).then_some(ap.scale),
                            causal: ap.causal,
                            sliding_window: (ap.sliding_window != 0).then_some(ap.sliding_window),
                            softcap: (ap.softcap != 0.0).then_some(ap.softcap),
                        };
                        // Split-K for long contexts when the (token, head) pairs leave the
                        // device underused: partitions of >= ATTN_PART_KEYS keys.
                        let parts = (*key_parts).min(cfg.sliding_window.map_or(usize::MAX, attn_key_parts));
                        let n_part = attn_split_parts(parts, n_tokens * ap.n_head, *n_sm, attn_ws.rows());
                        let split = (n_part > 1).then_some(AttnSplit { ws: &mut *attn_ws, n_part, min_keys: ATTN_PART_KEYS });
                        k.attention_split(s, kv, slot, &step.attn[grp], &*act(*q)?, ap.n_head, &cfg, split, &mut out).map_err(kerr)?;
                    }
                    Op::Silu { x } => k.unary(s, Unary::Silu, &*act(*x)?, &mut out).map_err(kerr)?,
                    Op::Sigmoid { x } => k.unary(s, Unary::Sigmoid, &*act(*x)?, &mut out).map_err(kerr)?,
                    Op::Gelu { x } => k.unary(s, Unary::Gelu, &*act(*x)?, &mut out).map_err(kerr)?,
                    Op::GeluErf { x } => k.unary(s, Unary::GeluErf, &*act(*x)?, &mut out).map_err(kerr)?,
                    Op::Softcap { x, cap } => k.unary(s, Unary::Softcap(*cap), &*act(*x)?, &mut out).map_err(kerr)?,
                    Op::SwiGlu { gate, up } | Op::GeGlu { gate, up } => {
                        let swi = matches!(node.op, Op::SwiGlu { .. });
                        let (ga, ua) = (act(*gate)?, act(*up)?);
                        if feeds_q8(idx, i, rows, cols) {
                            let glu = if swi { Glu::Swi } else { Glu::Ge };
                            k.glu_q8(s, glu, &ga, &ua, cols, &mut out, acts).map_err(kerr)?;
                            pre_q = Some(i);
                        } else if swi {
                            k.swiglu(s, &ga, &ua, &mut out).map_err(kerr)?
                        } else {
                            k.geglu(s, &ga, &ua, &mut out).map_err(kerr)?
                        }
                    }
                    Op::View { x, offset } => {
                        let (_, src_cols) = av.shape(*x);
                        k.copy_cols(s, &*act(*x)?, src_cols, *offset, cols, &mut out).map_err(kerr)?;
                    }
                    Op::OutputRows { x } => {
                        k.gather_rows(s, &*act(*x)?, cols, &*step.out_ids.view(0, n_outputs)?, &mut out).map_err(kerr)?
                    }
                    Op::Output { x } => s.copy_device(&*act(*x)?, &mut out)?,
                    Op::Pool { x, mode } => {
                        let mode = match mode {
                            PoolMode::Mean => rocmforge_gpu::PoolMode::Mean,
                            PoolMode::Cls => rocmforge_gpu::PoolMode::Cls,
                            PoolMode::Last => rocmforge_gpu::PoolMode::Last,
                        };
                        let seqs: Vec<(usize, usize)> = b.seqs.iter().map(|c| (c.start, c.len)).collect();
                        k.pool(s, mode, &*act(*x)?, cols, &seqs, &mut step.pool_meta, &mut out).map_err(kerr)?;
                    }
                    Op::L2Norm { x, eps } => k.l2_norm(s, &*act(*x)?, *eps, cols, &mut out).map_err(kerr)?,
                }
            }
            if let Some(d) = dump {
                for &j in st.nodes() {
                    let n = &g.nodes[j];
                    let Shape::Act { .. } = n.shape else { continue };
                    if d.wants(&n.name) {
                        let (r, c) = av.shape(j);
                        let mut data = vec![0f32; r * c];
                        s.copy_to_host(&*av.get(j)?, &mut data)?;
                        d.write(j, n, r, c, &data)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_device_stays_typed_through_kernel_errors() {
        let lost =
            GpuError::DeviceLost { device: "cuda:0".into(), call: "LaunchKernel", code: 719, name: "CUDA_ERROR_LAUNCH_FAILED".into() };
        let e = kernel_err("blk.0.attn_q", lost);
        assert!(e.is_device_lost(), "{e:?}");
        assert!(e.to_string().contains("CUDA_ERROR_LAUNCH_FAILED (719)"), "{e}");
        // Any other kernel error names its node.
        let e = kernel_err("blk.0.attn_q", GpuError::Shape { op: "matmul", what: "y has 3 values".into() });
        assert!(!e.is_device_lost());
        assert!(e.to_string().contains("blk.0.attn_q"), "{e}");
    }
}
