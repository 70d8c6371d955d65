//! The executor: runs a shape-checked [`Graph`] for a batch of sequence chunks on the CPU backend,
//! with attention over a paged KV cache.
//!
//! Memory planning happens once, when the executor is built: every activation gets a column range
//! `[off, off + cols)` chosen first-fit among the ranges of nodes still alive (a node dies after
//! its last use), so the arena holds `peak_cols × row_capacity` floats and node `i` lives at
//! `arena[off_i * stride ..][.. rows * cols_i]`, where `stride` (≤ row_capacity) is the batch's
//! row count rounded up to a power of two, so small batches stay compact. Ranges of simultaneously live nodes never
//! overlap, which is what makes handing out one mutable output next to immutable inputs sound.
//! The arena only grows when a batch has more rows than any before.
//!
//! ```text
//!  cols →     0          576        1152
//!  node 3     [ x  x  x  ]                    live 3..=5 (op 5 reads it)
//!  node 4                [ x  x  x  ]         live 4..=6
//!  node 5                            [ ... ]  cannot reuse 3's range: 3 is read by op 5
//!  node 7     [ x  x  x  ]                    reuses 3's range: 3 died after op 5
//! ```
//!
//! Batches: the tokens of several sequences are concatenated; each chunk carries its first
//! position and its KV block table (blocks of `block_size` tokens), and says which logits it
//! wants. The KV block allocation itself belongs to the engine; this module only reads and writes
//! the blocks it is given.
//!
//! Encoders: a graph with a POOL op (embeddings) needs each chunk to be a whole sequence
//! (`pos_start` 0), since a pooled row sums over every token of its sequence; its output then has
//! one row per chunk. Non-causal attention still goes through the KV cache (written, then read),
//! which keeps one attention path for every model.
//!
//! Intermediate dumps (for comparing a plugin's graph with another engine node by node): with
//! `ROCMFORGE_DUMP=DIR` in the environment when the executor is built (or after
//! [`Executor::set_dump`]), every forward call `c` writes each activation node `i`'s output as raw
//! little-endian f32, row-major `[rows, cols]` (rows = the batch's tokens in chunk order; after OUTPUT_ROWS, the rows
//! whose logits are wanted), to
//! `DIR/c{c:04}-n{i:04}-{name}.f32`, and appends one line per node to `DIR/index.tsv`:
//! `call  node  name  op  rows  cols  file`. `ROCMFORGE_DUMP_ONLY=name,name` (or `set_dump`'s
//! `only`) restricts the dump to those node names. The layout equals a ggml tensor with `ne = [cols,
//! rows]`, so `scripts/fixtures/llama_cpp_dump.py` (llama.cpp's eval callback) writes files that
//! compare directly. Off (the default) it costs one `Option` test per node.

use rocmforge_cpu::{AttnParams, KvCache, RopeParams, ThreadPool};
use rocmforge_quant::GgmlType;

use crate::graph::{Graph, Op, PoolMode, RowSrc, Rows, Shape};
use crate::source::{ModelSource, Weight};
use crate::RuntimeError;
use std::path::PathBuf;

/// Which logits a chunk wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// One sequence's part of a batch.
#[derive(Clone, Debug)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in its sequence (= tokens already in the KV cache).
    pub pos_start: usize,
    /// KV blocks of the sequence, covering at least `pos_start + tokens.len()` positions.
    pub block_table: &'a [u32],
    pub logits: Logits,
}

/// A batch of chunks run in one forward pass.
pub type SeqBatch<'a> = [SeqChunk<'a>];

struct WeightSlot {
    w: Weight,
    /// f32 copy for weights used element-wise (norm weights, biases, rope factors).
    vec: Option<Vec<f32>>,
}

/// KV cache geometry and size.
#[derive(Clone, Copy, Debug)]
pub struct KvConfig {
    pub block_size: usize,
    pub n_blocks: usize,
}

pub struct Executor {
    graph: Graph,
    weights: Vec<Option<WeightSlot>>,
    /// Column offset per activation node (usize::MAX for weights).
    col_off: Vec<usize>,
    peak_cols: usize,
    arena: Vec<f32>,
    row_cap: usize,
    kv: KvCache,
    kv_cfg: KvConfig,
    pool: &'static ThreadPool,
    n_out_cols: usize,
    dump: Option<Dump>,
}

/// Where and for which call intermediate tensors are being dumped (see the module doc).
struct Dump {
    dir: PathBuf,
    call: usize,
    /// Node names to dump; empty = every node.
    only: Vec<String>,
}

impl Dump {
    fn err(&self, what: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Dump { path: self.dir.clone(), what: what.to_string() }
    }

    /// Write node `i` (`rows × cols` floats in `data`) and its index line.
    fn write(&self, i: usize, node: &crate::graph::Node, rows: usize, cols: usize, data: &[f32]) -> Result<(), RuntimeError> {
        use std::io::Write;
        // The op's variant name, e.g. "RmsNorm", from its Debug form.
        let dbg = format!("{:?}", node.op);
        let op = dbg.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or("");
        // Node names are the plugin's ("blk.0.attn_q"); keep the file name portable.
        let safe: String = node.name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        let file = format!("c{:04}-n{i:04}-{safe}.f32", self.call);
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(self.dir.join(&file), bytes).map_err(|e| self.err(format!("{file}: {e}")))?;
        let mut idx = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("index.tsv"))
            .map_err(|e| self.err(format!("index.tsv: {e}")))?;
        writeln!(idx, "{}\t{i}\t{}\t{op}\t{rows}\t{cols}\t{file}", self.call, node.name).map_err(|e| self.err(format!("index.tsv: {e}")))
    }
}

/// Raw view of the arena handing out disjoint slices (see the module doc for why they are).
struct Arena {
    base: *mut f32,
    row_cap: usize,
}

impl Arena {
    /// # Safety
    /// Callers must only request ranges of nodes whose column ranges are disjoint from every
    /// mutable range handed out at the same time (guaranteed by the plan).
    unsafe fn get<'a>(&self, off_cols: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: off_cols * row_cap + len <= arena length by construction of the plan and
        // `ensure_rows`; disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off_cols * self.row_cap), len) }
    }
}

/// Row-wise ops on at least this many values are split over the thread pool by rows.
const PAR_MIN_VALUES: usize = 1 << 14;

/// `*mut f32` that may cross to pool threads (each writes its own rows).
#[derive(Clone, Copy)]
struct RowsPtr(*mut f32);
// SAFETY: used only by `par_rows`, whose chunks are disjoint row ranges of one live slice.
unsafe impl Send for RowsPtr {}
// SAFETY: as above.
unsafe impl Sync for RowsPtr {}

impl RowsPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Run `f(rows r0..r1, out rows r0..r1)` over disjoint row ranges, on the pool when the op is big
/// enough. Every row is computed exactly as it would be alone, so the bits never depend on the
/// split (llama.cpp splits its row-wise ops over threads the same way).
fn par_rows(pool: &ThreadPool, rows: usize, cols: usize, out: &mut [f32], f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) {
    if rows < 2 || rows * cols < PAR_MIN_VALUES || pool.n_threads() == 1 {
        f(0..rows, out);
        return;
    }
    let per = rows.div_ceil((pool.n_threads() * 4).min(rows));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let base = RowsPtr(out.as_mut_ptr());
    pool.run_dynamic(|_, _| loop {
        let r0 = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * per;
        if r0 >= rows {
            break;
        }
        let r1 = (r0 + per).min(rows);
        // SAFETY: rows r0..r1 of `out` (rows * cols values) are handed to this call only.
        let o = unsafe { std::slice::from_raw_parts_mut(base.get().add(r0 * cols), (r1 - r0) * cols) };
        f(r0..r1, o);
    });
}

fn inputs_of(op: &Op) -> Vec<usize> {
    match *op {
        Op::Weight { .. } => vec![],
        Op::MoeRoute { logits, .. } => vec![logits],
        Op::MoeGateUp { x, route, gate, up, .. } => vec![x, route, gate, up],
        Op::MoeDown { h, route, down, .. } => vec![h, route, down],
        Op::GetRows { table, .. } => vec![table],
        Op::RmsNorm { x, w, .. } => std::iter::once(x).chain(w).collect(),
        Op::LayerNorm { x, w, b, .. } => std::iter::once(x).chain(w).chain(b).collect(),
        Op::MatMul { x, w, bias } => [x, w].into_iter().chain(bias).collect(),
        Op::Add { a, b } | Op::Mul { a, b } => vec![a, b],
        Op::Rope { x, freq_factors, .. } => std::iter::once(x).chain(freq_factors).collect(),
        Op::Attention { q, k, v, .. } => vec![q, k, v],
        Op::SwiGlu { gate, up } | Op::GeGlu { gate, up } => vec![gate, up],
        Op::Scale { x, .. }
        | Op::Silu { x }
        | Op::Sigmoid { x }
        | Op::Gelu { x }
        | Op::GeluErf { x }
        | Op::Softcap { x, .. }
        | Op::View { x, .. }
        | Op::OutputRows { x }
        | Op::Output { x }
        | Op::Pool { x, .. }
        | Op::L2Norm { x, .. } => vec![x],
    }
}

impl Executor {
    /// Load the graph's weights from `src` and plan memory. `n_ctx` bounds the tokens per sequence.
    pub fn new(graph: Graph, src: &ModelSource, kv_cfg: KvConfig) -> Result<Executor, RuntimeError> {
        let n = graph.nodes.len();
        // Which weights are read element-wise (need an f32 vector).
        let mut needs_vec = vec![false; n];
        for node in &graph.nodes {
            match node.op {
                Op::RmsNorm { w, .. } => w.into_iter().for_each(|i| needs_vec[i] = true),
                Op::LayerNorm { w, b, .. } => w.into_iter().chain(b).for_each(|i| needs_vec[i] = true),
                Op::MatMul { bias, .. } => bias.into_iter().for_each(|i| needs_vec[i] = true),
                Op::Add { b, .. } | Op::Mul { b, .. } => needs_vec[b] = true,
                Op::Rope { freq_factors, .. } => freq_factors.into_iter().for_each(|i| needs_vec[i] = true),
                _ => {}
            }
        }
        let mut weights: Vec<Option<WeightSlot>> = Vec::with_capacity(n);
        for (i, node) in graph.nodes.iter().enumerate() {
            if let Op::Weight { tensor } = &node.op {
                let w = src.weight(tensor)?;
                let vec = if needs_vec[i] { Some(w.to_f32()?) } else { None };
                if !needs_vec[i] && !matches!(w.ty, GgmlType::F32) && !rocmforge_quant::can_dequantize(w.ty) {
                    return Err(RuntimeError::Weight {
                        name: tensor.clone(),
                        what: format!("type {} is not supported by the CPU backend", w.ty),
                    });
                }
                weights.push(Some(WeightSlot { w, vec }));
            } else {
                weights.push(None);
            }
        }

        // Lifetimes: last reader of each node; the output lives to the end.
        let mut last_use: Vec<usize> = (0..n).collect();
        for (i, node) in graph.nodes.iter().enumerate() {
            for j in inputs_of(&node.op) {
                last_use[j] = last_use[j].max(i);
            }
        }
        if let Some(o) = graph.output {
            last_use[o] = usize::MAX;
        }
        // First-fit column ranges.
        let mut col_off = vec![usize::MAX; n];
        let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (off, cols, last_use)
        let mut peak = 0usize;
        for (i, node) in graph.nodes.iter().enumerate() {
            let Shape::Act { cols, .. } = node.shape else { continue };
            live.retain(|&(_, _, lu)| lu >= i);
            live.sort_unstable();
            let mut off = 0usize;
            for &(o, c, _) in &live {
                if off + cols <= o {
                    break;
                }
                off = off.max(o + c);
            }
            col_off[i] = off;
            live.push((off, cols, last_use[i]));
            peak = peak.max(off + cols);
        }
        let n_out_cols = match graph.output.map(|o| &graph.nodes[o].shape) {
            Some(Shape::Act { cols, .. }) => *cols,
            _ => 0,
        };
        let geo = graph
            .layers
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| RuntimeError::Graph { node: "graph".into(), what: "no attention layer".into() })?;
        if graph.layers.iter().any(|l| *l != Some(geo)) {
            return Err(RuntimeError::Graph {
                node: "graph".into(),
                what: "layers with different KV geometry are not supported yet".into(),
            });
        }
        let kv = KvCache::new(graph.layers.len(), geo.n_head_kv, geo.head_dim_k, geo.head_dim_v, kv_cfg.block_size, kv_cfg.n_blocks);
        Ok(Executor {
            graph,
            weights,
            col_off,
            peak_cols: peak,
            arena: Vec::new(),
            row_cap: 0,
            kv,
            kv_cfg,
            pool: ThreadPool::global(),
            n_out_cols,
            dump: std::env::var_os("ROCMFORGE_DUMP").filter(|d| !d.is_empty()).map(|d| Dump {
                dir: d.into(),
                call: 0,
                only: std::env::var("ROCMFORGE_DUMP_ONLY")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            }),
        })
    }

    /// Dump every node's output of the following forward calls into `dir` (created if missing;
    /// calls are numbered from 0 again), or stop dumping with `None`; `only` lists the node names
    /// to dump (empty: all). See the module doc.
    pub fn set_dump(&mut self, dir: Option<PathBuf>, only: &[&str]) -> Result<(), RuntimeError> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(|e| RuntimeError::Dump { path: d.clone(), what: e.to_string() })?;
        }
        self.dump = dir.map(|dir| Dump { dir, call: 0, only: only.iter().map(|s| s.to_string()).collect() });
        Ok(())
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn kv_config(&self) -> KvConfig {
        self.kv_cfg
    }

    /// Whether the output rows are embeddings (the plugin's OUTPUT kind) rather than logits.
    pub fn is_embedding(&self) -> bool {
        self.graph.embedding
    }

    /// Columns of the output (the vocabulary size for logits).
    pub fn n_out_cols(&self) -> usize {
        self.n_out_cols
    }

    fn ensure_rows(&mut self, rows: usize) {
        if rows > self.row_cap {
            self.row_cap = rows.next_power_of_two().max(8);
            self.arena = vec![0.0; self.peak_cols * self.row_cap];
        }
    }

    fn wslot(&self, i: usize) -> &WeightSlot {
        self.weights[i].as_ref().expect("graph validated: weight node")
    }

    fn wvec(&self, i: usize) -> &[f32] {
        self.wslot(i).vec.as_deref().expect("planned: element-wise weights have an f32 copy")
    }

    /// Node `i` (a MATMUL) and the MATMULs right after it (weight nodes in between skipped) that
    /// read the same input with the same row count and the same k, when all their output column
    /// ranges are disjoint from each other and from the input's (the plan guarantees this for
    /// outputs still read later; a never-read output may share columns).
    fn matmul_group(&self, i: usize) -> Vec<usize> {
        let nodes = &self.graph.nodes;
        let (Op::MatMul { x, w, .. }, Shape::Act { rows, .. }) = (&nodes[i].op, &nodes[i].shape) else { return vec![i] };
        let k = self.wslot(*w).w.dims[0];
        let mut group = vec![i];
        for (j, n) in nodes.iter().enumerate().skip(i + 1) {
            match (&n.op, &n.shape) {
                (Op::Weight { .. }, _) => {}
                (Op::MatMul { x: xj, w: wj, .. }, Shape::Act { rows: rj, .. })
                    if xj == x && rj == rows && self.wslot(*wj).w.dims[0] == k =>
                {
                    group.push(j)
                }
                _ => break,
            }
        }
        let range = |j: usize| match nodes[j].shape {
            Shape::Act { cols, .. } => (self.col_off[j], self.col_off[j] + cols),
            Shape::Weight(_) => (0, 0),
        };
        let mut ranges: Vec<(usize, usize)> = group.iter().map(|&j| range(j)).collect();
        ranges.push(range(*x));
        ranges.sort_unstable();
        if ranges.windows(2).any(|r| r[0].1 > r[1].0) {
            return vec![i];
        }
        group
    }

    /// Run one forward pass. Returns the output rows (logits of the rows asked for, in chunk order;
    /// for a pooling embedding model one row per chunk) as a flat `[n_rows, n_out_cols]` vector.
    pub fn forward(&mut self, batch: &SeqBatch) -> Result<Vec<f32>, RuntimeError> {
        let n_tokens: usize = batch.iter().map(|c| c.tokens.len()).sum();
        if n_tokens == 0 {
            return Ok(Vec::new());
        }
        let mut tokens = Vec::with_capacity(n_tokens);
        let mut positions = Vec::with_capacity(n_tokens);
        let mut out_ids = Vec::new();
        for c in batch {
            let need = (c.pos_start + c.tokens.len()).div_ceil(self.kv_cfg.block_size);
            if c.block_table.len() < need {
                return Err(RuntimeError::Batch(format!(
                    "block table of {} blocks for {} positions",
                    c.block_table.len(),
                    c.pos_start + c.tokens.len()
                )));
            }
            if let Some(&b) = c.block_table.iter().find(|&&b| b as usize >= self.kv_cfg.n_blocks) {
                return Err(RuntimeError::Batch(format!("KV block {b} out of range (pool of {})", self.kv_cfg.n_blocks)));
            }
            let base = tokens.len();
            match c.logits {
                Logits::None => {}
                Logits::Last => out_ids.push(base + c.tokens.len() - 1),
                Logits::All => out_ids.extend(base..base + c.tokens.len()),
            }
            tokens.extend_from_slice(c.tokens);
            positions.extend((c.pos_start..c.pos_start + c.tokens.len()).map(|p| p as i32));
        }
        let pools = self.graph.nodes.iter().any(|n| matches!(n.op, Op::Pool { .. }));
        if pools && batch.iter().any(|c| c.pos_start != 0 || c.tokens.is_empty()) {
            return Err(RuntimeError::Batch(
                "a pooling (embedding) model needs every sequence whole and non-empty in one chunk (pos_start 0)".into(),
            ));
        }
        let n_seqs = batch.len();
        self.ensure_rows(n_tokens.max(n_seqs));
        // Lay the nodes out with the stride this batch needs, not the largest batch seen: after a
        // long prefill, single-token decode would otherwise touch buffers spread over the whole
        // arena (measured: 245 -> 195 tokens/s on SmolLM2 after a 512-token prompt). Any stride
        // >= the batch's rows keeps live ranges disjoint; it is <= row_cap, so it fits the arena.
        let stride = n_tokens.next_power_of_two().max(8).min(self.row_cap);
        let arena = Arena { base: self.arena.as_mut_ptr(), row_cap: stride };
        let n_outputs = out_ids.len();
        let rows_of = |r: Rows| match r {
            Rows::Tokens => n_tokens,
            Rows::Outputs => n_outputs,
            Rows::Seqs => n_seqs,
        };
        let mut result = Vec::new();
        // Nodes below this index were already computed as part of a matmul group.
        let mut done_until = 0usize;

        for i in 0..self.graph.nodes.len() {
            if i < done_until {
                continue;
            }
            let node = &self.graph.nodes[i];
            let Shape::Act { rows, cols } = node.shape else { continue };
            let rows = rows_of(rows);
            // SAFETY: node i's column range is disjoint from every live input's (plan invariant).
            let out = unsafe { arena.get(self.col_off[i], rows * cols) };
            let act = |j: usize| -> &[f32] {
                let (r, c) = match self.graph.nodes[j].shape {
                    Shape::Act { rows, cols } => (rows_of(rows), cols),
                    Shape::Weight(_) => unreachable!("graph validated: activation input"),
                };
                // SAFETY: input j is live and disjoint from `out`; read-only here.
                unsafe { arena.get(self.col_off[j], r * c) }
            };
            let map_err = |e: rocmforge_cpu::CpuError| RuntimeError::Cpu(format!("{}: {e}", node.name));
            match &node.op {
                Op::Weight { .. } => {}
                Op::MoeRoute { logits, n_expert, k, renorm } => crate::moe::route(act(*logits), *n_expert, *k, *renorm, out),
                Op::MoeGateUp { x, route, gate, up, k, n_ff, geglu } => {
                    let (g, u) = (&self.wslot(*gate).w, &self.wslot(*up).w);
                    crate::moe::gate_up(self.pool, act(*x), act(*route), *k, g, u, *n_ff, *geglu, out).map_err(map_err)?;
                }
                Op::MoeDown { h, route, down, k, n_ff } => {
                    crate::moe::down(self.pool, act(*h), act(*route), *k, &self.wslot(*down).w, *n_ff, cols, out).map_err(map_err)?;
                }
                Op::GetRows { table, src } => {
                    let w = &self.wslot(*table).w;
                    let ids: std::borrow::Cow<[u32]> = match src {
                        RowSrc::Tokens => (&tokens[..]).into(),
                        RowSrc::Positions => {
                            let n_rows = w.dims.get(1).copied().unwrap_or(0);
                            if let Some(&p) = positions.iter().find(|&&p| p as usize >= n_rows) {
                                return Err(RuntimeError::Batch(format!(
                                    "{}: position {p} beyond the {n_rows} positions the model has",
                                    node.name
                                )));
                            }
                            positions.iter().map(|&p| p as u32).collect::<Vec<u32>>().into()
                        }
                        RowSrc::Constant(id) => vec![*id; n_tokens].into(),
                    };
                    rocmforge_cpu::get_rows(w.ty, w.bytes.as_slice(), cols, &ids, out).map_err(map_err)?;
                }
                Op::RmsNorm { x, w, eps, group } => {
                    let len = if *group == 0 { cols } else { *group };
                    let (xv, wv) = (act(*x), w.map(|w| self.wvec(w)));
                    par_rows(self.pool, rows, cols, out, |r, o| {
                        rocmforge_cpu::rms_norm(&xv[r.start * cols..r.end * cols], wv, *eps, len, o)
                    });
                }
                Op::LayerNorm { x, w, b, eps } => {
                    let (xv, wv, bv) = (act(*x), w.map(|w| self.wvec(w)), b.map(|b| self.wvec(b)));
                    par_rows(self.pool, rows, cols, out, |r, o| {
                        rocmforge_cpu::layer_norm(&xv[r.start * cols..r.end * cols], wv, bv, *eps, cols, o)
                    });
                }
                Op::MatMul { x, w, bias } => {
                    let ws = &self.wslot(*w).w;
                    let k = ws.dims[0];
                    let group = self.matmul_group(i);
                    if group.len() > 1 {
                        // Sibling projections of one input (Q/K/V, gate/up): one call, one
                        // quantization, one thread-pool job; same numbers as one by one.
                        let mut outs = Vec::with_capacity(group.len());
                        let mut out_i = Some(out);
                        for &j in &group {
                            let Op::MatMul { w: wj, bias: bj, .. } = self.graph.nodes[j].op else { unreachable!("matmul_group") };
                            let Shape::Act { cols: cj, .. } = self.graph.nodes[j].shape else { unreachable!("matmul_group") };
                            let wsj = &self.wslot(wj).w;
                            outs.push(rocmforge_cpu::MatmulOut {
                                ty: wsj.ty,
                                w: wsj.bytes.as_slice(),
                                n_out: cj,
                                bias: bj.map(|b| self.wvec(b)),
                                // SAFETY: `matmul_group` checked these column ranges are pairwise
                                // disjoint and disjoint from x's; node i's is `out` itself.
                                y: match out_i.take() {
                                    Some(o) if j == i => o,
                                    _ => unsafe { arena.get(self.col_off[j], rows * cj) },
                                },
                            });
                        }
                        rocmforge_cpu::matmul_many(self.pool, k, act(*x), rows, &mut outs).map_err(map_err)?;
                        done_until = group[group.len() - 1] + 1;
                    } else {
                        let bias = bias.map(|b| self.wvec(b));
                        rocmforge_cpu::matmul_bias(self.pool, ws.ty, ws.bytes.as_slice(), cols, k, act(*x), rows, bias, out)
                            .map_err(map_err)?;
                    }
                }
                Op::Add { a, b } | Op::Mul { a, b } => {
                    let is_add = matches!(node.op, Op::Add { .. });
                    let av = act(*a);
                    let bv: &[f32] = match self.graph.nodes[*b].shape {
                        Shape::Weight(_) => self.wvec(*b),
                        Shape::Act { .. } => act(*b),
                    };
                    // b: a weight vector (every row), an activation of a's shape, or an activation
                    // [rows, 1] (one value per row, e.g. a per-token gate). Decided by shape, not
                    // length: [rows, 1] and a vector have the same length when rows == cols.
                    let per_row = matches!(self.graph.nodes[*b].shape, Shape::Act { cols: 1, .. }) && cols != 1;
                    par_rows(self.pool, rows, cols, out, |rr, out| {
                        for (i, orow) in out.chunks_exact_mut(cols).enumerate() {
                            let r = rr.start + i;
                            let arow = &av[r * cols..(r + 1) * cols];
                            if per_row {
                                let y = bv[r];
                                if is_add {
                                    orow.iter_mut().zip(arow).for_each(|(o, x)| *o = x + y);
                                } else {
                                    orow.iter_mut().zip(arow).for_each(|(o, x)| *o = x * y);
                                }
                                continue;
                            }
                            let brow = if bv.len() == cols { bv } else { &bv[r * cols..(r + 1) * cols] };
                            if is_add {
                                for ((o, x), y) in orow.iter_mut().zip(arow).zip(brow) {
                                    *o = x + y;
                                }
                            } else {
                                for ((o, x), y) in orow.iter_mut().zip(arow).zip(brow) {
                                    *o = x * y;
                                }
                            }
                        }
                    });
                }
                Op::Scale { x, s } => {
                    let xv = act(*x);
                    par_rows(self.pool, rows, cols, out, |r, o| o.iter_mut().zip(&xv[r.start * cols..]).for_each(|(o, v)| *o = v * s));
                }
                Op::Rope { x, freq_factors, p } => {
                    out.copy_from_slice(act(*x));
                    let params = RopeParams {
                        n_rot: p.n_rot,
                        neox: p.neox,
                        freq_base: p.freq_base,
                        freq_scale: p.freq_scale,
                        ext_factor: p.ext_factor,
                        attn_factor: p.attn_factor,
                        beta_fast: p.beta_fast,
                        beta_slow: p.beta_slow,
                        n_ctx_orig: p.n_ctx_orig,
                        freq_factors: freq_factors.map(|f| self.wvec(f).to_vec()),
                    };
                    par_rows(self.pool, rows, cols, out, |r, o| {
                        rocmforge_cpu::rope(o, r.len(), p.n_head, p.head_dim, &positions[r.start..r.end], &params)
                    });
                }
                Op::Attention { q, k, v, p } => {
                    let (qa, ka, va) = (act(*q), act(*k), act(*v));
                    let (qc, kc, vc) = (p.n_head * p.head_dim_k, p.n_head_kv * p.head_dim_k, p.n_head_kv * p.head_dim_v);
                    let params = AttnParams {
                        causal: p.causal,
                        sliding_window: if p.sliding_window == 0 { None } else { Some(p.sliding_window) },
                        scale: if p.scale == 0.0 { None } else { Some(p.scale) },
                        softcap: if p.softcap == 0.0 { None } else { Some(p.softcap) },
                    };
                    let mut t0 = 0usize;
                    for c in batch {
                        let nt = c.tokens.len();
                        self.kv
                            .write(p.layer, c.block_table, c.pos_start, &ka[t0 * kc..(t0 + nt) * kc], &va[t0 * vc..(t0 + nt) * vc], nt)
                            .map_err(map_err)?;
                        rocmforge_cpu::attention(
                            self.pool,
                            &self.kv,
                            p.layer,
                            c.block_table,
                            &qa[t0 * qc..(t0 + nt) * qc],
                            nt,
                            c.pos_start,
                            p.n_head,
                            &params,
                            &mut out[t0 * cols..(t0 + nt) * cols],
                        )
                        .map_err(map_err)?;
                        t0 += nt;
                    }
                }
                Op::Silu { x } => {
                    let xv = act(*x);
                    par_rows(self.pool, rows, cols, out, |r, o| rocmforge_cpu::silu(&xv[r.start * cols..r.end * cols], o));
                }
                Op::Sigmoid { x } => out.iter_mut().zip(act(*x)).for_each(|(o, &v)| *o = 1.0 / (1.0 + (-v).exp())),
                Op::Gelu { x } => {
                    let xv = act(*x);
                    par_rows(self.pool, rows, cols, out, |r, o| rocmforge_cpu::gelu(&xv[r.start * cols..r.end * cols], o));
                }
                Op::GeluErf { x } => {
                    let xv = act(*x);
                    par_rows(self.pool, rows, cols, out, |r, o| rocmforge_cpu::gelu_erf(&xv[r.start * cols..r.end * cols], o));
                }
                Op::SwiGlu { gate, up } => {
                    let (g, u) = (act(*gate), act(*up));
                    par_rows(self.pool, rows, cols, out, |r, o| {
                        rocmforge_cpu::swiglu(&g[r.start * cols..r.end * cols], &u[r.start * cols..r.end * cols], o)
                    });
                }
                Op::GeGlu { gate, up } => {
                    let (g, u) = (act(*gate), act(*up));
                    par_rows(self.pool, rows, cols, out, |r, o| {
                        rocmforge_cpu::geglu(&g[r.start * cols..r.end * cols], &u[r.start * cols..r.end * cols], o)
                    });
                }
                Op::Softcap { x, cap } => {
                    out.copy_from_slice(act(*x));
                    rocmforge_cpu::softcap(out, *cap);
                }
                Op::View { x, offset } => {
                    let src_cols = match self.graph.nodes[*x].shape {
                        Shape::Act { cols, .. } => cols,
                        Shape::Weight(_) => unreachable!("graph validated"),
                    };
                    for (orow, srow) in out.chunks_exact_mut(cols).zip(act(*x).chunks_exact(src_cols)) {
                        orow.copy_from_slice(&srow[*offset..*offset + cols]);
                    }
                }
                Op::OutputRows { x } => {
                    let src = act(*x);
                    for (orow, &t) in out.chunks_exact_mut(cols).zip(&out_ids) {
                        orow.copy_from_slice(&src[t * cols..(t + 1) * cols]);
                    }
                }
                Op::Output { x } => {
                    out.copy_from_slice(act(*x));
                    result = out.to_vec();
                }
                Op::Pool { x, mode } => {
                    let src = act(*x);
                    let mut t0 = 0usize;
                    for (orow, c) in out.chunks_exact_mut(cols).zip(batch) {
                        let nt = c.tokens.len();
                        let tok_row = |t: usize| &src[(t0 + t) * cols..(t0 + t + 1) * cols];
                        match mode {
                            PoolMode::Cls => orow.copy_from_slice(tok_row(0)),
                            PoolMode::Last => orow.copy_from_slice(tok_row(nt - 1)),
                            PoolMode::Mean => {
                                // Sum in f64: a mean over hundreds of tokens stays exact to f32.
                                let mut acc = vec![0f64; cols];
                                for t in 0..nt {
                                    acc.iter_mut().zip(tok_row(t)).for_each(|(a, &v)| *a += v as f64);
                                }
                                orow.iter_mut().zip(&acc).for_each(|(o, a)| *o = (a / nt as f64) as f32);
                            }
                        }
                        t0 += nt;
                    }
                }
                Op::L2Norm { x, eps } => {
                    for (orow, xrow) in out.chunks_exact_mut(cols).zip(act(*x).chunks_exact(cols)) {
                        let norm = xrow.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt().max(*eps as f64);
                        orow.iter_mut().zip(xrow).for_each(|(o, &v)| *o = (v as f64 / norm) as f32);
                    }
                }
            }
            if let Some(d) = &self.dump {
                // This node, and the rest of its matmul group computed with it.
                for j in i..done_until.max(i + 1) {
                    let n = &self.graph.nodes[j];
                    let Shape::Act { rows, cols } = n.shape else { continue };
                    if !d.only.is_empty() && !d.only.contains(&n.name) {
                        continue;
                    }
                    let rows = rows_of(rows);
                    // SAFETY: node j was just written and is read-only here; no mutable slice of
                    // the arena is alive at this point.
                    let data = unsafe { arena.get(self.col_off[j], rows * cols) };
                    d.write(j, n, rows, cols, data)?;
                }
            }
        }
        if let Some(d) = &mut self.dump {
            d.call += 1;
        }
        Ok(result)
    }
}
