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
//! - the paged f16 KV cache (`rocmforge_gpu::GpuKvCache`, the CPU cache's layout);
//! - per-step metadata buffers (token ids, positions, KV slots, attention tables, output rows),
//!   refilled by small host-to-device copies at the start of each step; they grow (reallocate)
//!   only if a step has more sequences or block-table entries than any before.
//!
//! Decode steps (one token per sequence) replay a CUDA/HIP graph captured once per token count:
//! every per-step value the kernels read lives in the step buffers, so a replay only needs the
//! small uploads before it (`ROCMFORGE_GPU_GRAPHS=0` turns this off; a failed capture falls back
//! to eager launches with one warning).
//!
//! Only the output rows come back to the host, once per forward. A batch larger than the arena
//! is refused (the engine's token budget sizes it), never silently reallocated.
//!
//! Ops: every op of the graph IR except the MoE ones (refused at load with
//! [`RuntimeError::Unsupported`] naming the node).

mod weights;

use rocmforge_gpu::{
    AttnBatch, AttnConfig, AttnSeq, Device, DeviceBuffer, DeviceView, GemmScratch, Glu, GpuError, GpuKvCache, GraphExec, Kernels, KvSlots,
    QuantActs, RopeConfig, Stream, Unary, GEMM_CHUNK_VALUES,
};
use std::collections::HashMap;

use rocmforge_quant::GgmlType;

use self::weights::GpuWeight;
use super::Backend;
use crate::batch::BatchMeta;
use crate::dump::Dump;
use crate::exec::KvConfig;
use crate::graph::{Graph, Op, PoolMode, RowSrc, Rows, Shape};
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
    slots: KvSlots,
    attn: AttnBatch,
    /// Capacity of `attn` in sequences and block-table entries.
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
    acts: QuantActs,
    step: StepBufs,
    /// The output rows of the last forward, in host memory.
    out: Vec<f32>,
    /// Row argmaxes of the last `forward_argmax` (device scratch and host copy).
    argmax_ids: DeviceBuffer<u32>,
    out_ids: Vec<u32>,
    /// Decode steps replay a graph captured once per token count (see `graph_key`).
    use_graphs: bool,
    /// The graph reads only per-step data that lives in the step buffers (no ids built per op):
    /// no GET_ROWS of positions or constants, no POOL.
    capturable: bool,
    graphs: HashMap<usize, GraphExec>,
    /// Matrix products of at least `gemm_min_tokens` tokens (prefill chunks) go through the
    /// vendor GEMM on f16 copies (`rocmforge_gpu::GemmScratch`); `None` when the BLAS library
    /// is missing or the token budget never reaches the threshold.
    gemm: Option<GemmScratch>,
    gemm_min_tokens: usize,
}

/// Token count from which a matrix product uses the GEMM path rather than the matrix-vector
/// kernels (`ROCMFORGE_GEMM_MIN_TOKENS` overrides; 0 turns the GEMM off).
const GEMM_MIN_TOKENS: usize = 32;

fn unsupported(node: &str, op: &str) -> RuntimeError {
    RuntimeError::Unsupported { node: node.to_string(), op: op.to_string(), backend: "GPU".into() }
}

impl GpuBackend {
    /// Upload the graph's weights to `dev`, compile (or load from the disk cache) the kernels,
    /// and allocate the KV cache, the arena for batches of up to `max_batch_tokens` tokens and the
    /// per-step buffers. Refuses graphs with ops the GPU lacks and models that do not fit the
    /// device's free memory (with both numbers).
    pub fn new(
        dev: Device,
        g: &Graph,
        p: &Plan,
        src: &ModelSource,
        kv_cfg: KvConfig,
        max_batch_tokens: usize,
    ) -> Result<GpuBackend, RuntimeError> {
        for node in &g.nodes {
            let name = match node.op {
                Op::MoeRoute { .. } => "MOE_ROUTE",
                Op::MoeGateUp { .. } => "MOE_GATE_UP",
                Op::MoeDown { .. } => "MOE_DOWN",
                _ => continue,
            };
            return Err(unsupported(&node.name, name));
        }
        let geo = g
            .layers
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| RuntimeError::Graph { node: "graph".into(), what: "no attention layer".into() })?;
        if g.layers.iter().any(|l| *l != Some(geo)) {
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
        let kv_bytes = g.layers.len() * kv_cfg.n_blocks * kv_cfg.block_size * geo.n_head_kv * (geo.head_dim_k + geo.head_dim_v) * 2;
        let arena_bytes = p.peak_cols * row_cap * 4;
        let gemm_min_tokens = std::env::var("ROCMFORGE_GEMM_MIN_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(GEMM_MIN_TOKENS);
        let want_gemm = gemm_min_tokens > 0 && max_batch_tokens >= gemm_min_tokens;
        let gemm_bytes = if want_gemm { (row_cap * max_k + GEMM_CHUNK_VALUES.max(max_k)) * 2 } else { 0 };
        let scratch = row_cap * max_k.div_ceil(32) * 32 * 3 / 2 + gemm_bytes;
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
        let kv = GpuKvCache::new(&dev, g.layers.len(), geo.n_head_kv, geo.head_dim_k, geo.head_dim_v, kv_cfg.block_size, kv_cfg.n_blocks)?;
        let arena = dev.alloc::<f32>((p.peak_cols * row_cap).max(1))?;
        let acts = QuantActs::new(&dev, row_cap * max_k.div_ceil(32) * 32)?;
        let attn_cap = (row_cap, kv_cfg.n_blocks.max(row_cap));
        let step = StepBufs {
            tokens: dev.alloc(row_cap)?,
            positions: dev.alloc(row_cap)?,
            row_ids: dev.alloc(row_cap)?,
            out_ids: dev.alloc(row_cap)?,
            pool_meta: dev.alloc(2 * row_cap)?,
            slots: KvSlots::with_capacity(&dev, row_cap)?,
            attn: AttnBatch::with_capacity(&dev, row_cap, attn_cap.0, attn_cap.1)?,
            attn_cap,
        };
        tracing::info!(
            "GPU backend on {}: weights {:.1} MiB, KV {:.1} MiB, arena {:.1} MiB ({} tokens)",
            dev.info(),
            w_bytes as f64 / 1048576.0,
            kv_bytes as f64 / 1048576.0,
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
        let mut slots = Vec::with_capacity(n);
        let mut q_pos: Vec<Vec<usize>> = Vec::with_capacity(b.n_seqs());
        for (i, c) in b.seqs.iter().enumerate() {
            let table = b.block_table(i);
            let pos: Vec<usize> = (c.pos_start..c.pos_start + c.len).collect();
            slots.extend(pos.iter().map(|&p| (table[p / bs] as usize * bs + p % bs) as i64));
            q_pos.push(pos);
        }
        st.slots.fill(s, &self.kv, &slots)?;
        let seqs: Vec<AttnSeq> = b
            .seqs
            .iter()
            .enumerate()
            .map(|(i, c)| AttnSeq { block_table: b.block_table(i), seq_len: c.pos_start + c.len, q_positions: &q_pos[i] })
            .collect();
        let want = (b.n_seqs(), b.block_tables.len().max(1));
        if want.0 > st.attn_cap.0 || want.1 > st.attn_cap.1 {
            // Rare (prefix-shared tables, many sequences): grow, keeping powers of two.
            st.attn_cap = (want.0.max(st.attn_cap.0).next_power_of_two(), want.1.max(st.attn_cap.1).next_power_of_two());
            st.attn = AttnBatch::with_capacity(&self.dev, self.row_cap, st.attn_cap.0, st.attn_cap.1)?;
            // Captured graphs hold the old buffers' addresses.
            self.graphs.clear();
        }
        st.attn.fill(s, &self.kv, &seqs)?;
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
        let kerr = |e: GpuError| RuntimeError::Kernel { node: "argmax".into(), what: e.to_string() };
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
    /// graph captured for their token count: every per-step value they read (ids, positions,
    /// slots, attention tables, output rows) is in the step buffers, and every launch's shape
    /// depends on the token count alone.
    fn graph_key(&self, b: &BatchMeta, dump: Option<&Dump>) -> Option<usize> {
        let decode = b.seqs.iter().all(|c| c.len == 1) && b.n_outputs() == b.n_tokens();
        (self.use_graphs && self.capturable && dump.is_none() && decode).then_some(b.n_tokens())
    }

    /// Capture the plan's launches for `key` tokens into a graph (nothing runs while capturing).
    fn capture(&mut self, key: usize, g: &Graph, p: &Plan, b: &BatchMeta, stride: usize) -> Result<(), RuntimeError> {
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
        let GpuBackend { k, stream: s, weights, arena, kv, acts, step, gemm, gemm_min_tokens, .. } = self;
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
                Op::MatMul { x, w, .. } => x == i && wt(w).mat.as_ref().is_some_and(|m| m.ty != GgmlType::F16),
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
            let kerr = |e: GpuError| RuntimeError::Kernel { node: node.name.clone(), what: e.to_string() };
            if let Step::MatMulGroup(group) = st {
                let Op::MatMul { x, w, .. } = node.op else { unreachable!("plan: a group of MATMULs") };
                let (rows, kdim) = av.shape(x);
                let xv = av.get(x).map_err(kerr)?;
                // Quantize the shared input once for every quantized matrix of the group
                // (Q/K/V, gate/up); F16 matrices read the f32 input directly.
                let all_q = group.iter().all(|&j| match g.nodes[j].op {
                    Op::MatMul { w, .. } => wt(w).mat.as_ref().is_some_and(|m| m.ty != GgmlType::F16),
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
                        k.kv_write_slots(s, kv, ap.layer, &*act(*kk)?, &*act(*v)?, &step.slots).map_err(kerr)?;
                        let cfg = AttnConfig {
                            scale: (ap.scale != 0.0).then_some(ap.scale),
                            causal: ap.causal,
                            sliding_window: (ap.sliding_window != 0).then_some(ap.sliding_window),
                            softcap: (ap.softcap != 0.0).then_some(ap.softcap),
                        };
                        k.attention(s, kv, ap.layer, &step.attn, &*act(*q)?, ap.n_head, &cfg, &mut out).map_err(kerr)?;
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
