//! The CPU backend: runs a [`Plan`] with the kernels of `rocmforge_cpu` (runtime-dispatched
//! SIMD) over an f32 activation arena and a paged KV cache (`rocmforge_cpu::KvCache`,
//! `[layer][block][slot][head][dim]`, elements f16 by default, or q8_0 / fp8 E4M3). The cache's
//! "layers" are the KV layout's slots (`kv_layout.rs`): layer `il` keeps its K/V in plane
//! `slot(il)` of the blocks of its group's table (slot = `il` in a one-group layout).
//!
//! Arena: `peak_cols × row_cap` floats, sized at construction for the largest batch the caller
//! announced and grown (reallocated) only if a bigger batch arrives; node `i` of a batch of
//! `n` tokens lives at `arena[col_off_i * stride ..]` with `stride = next_pow2(n)` (see `plan`),
//! so single-token decode after a long prefill touches a compact region (measured: 245 -> 195
//! tokens/s on SmolLM2 when it did not). The plan guarantees that live nodes' column ranges are
//! disjoint, which is what makes handing out one mutable output next to immutable inputs sound.
//!
//! Row-wise ops are split over the thread pool by rows; every row is computed exactly as it
//! would be alone, so the bits never depend on the split.
//!
//! fp8 KV scales (`kv_scales.rs`) are kept per model layer and given to the cache with each
//! write and attention call (one cache plane holds different layers in a grouped layout).

use rocmforge_cpu::{AttnParams, KvCache, KvCacheType, KvHeadScales, RopeParams, ThreadPool};
use rocmforge_quant::GgmlType;

use super::Backend;
use crate::batch::BatchMeta;
use crate::dump::Dump;
use crate::exec::KvConfig;
use crate::graph::{Graph, Op, PoolMode, RowSrc, Rows, Shape};
use crate::kv_layout::KvLayout;
use crate::kv_scales::KvScales;
use crate::plan::{Plan, Step};
use crate::source::{ModelSource, Weight};
use crate::RuntimeError;

struct WeightSlot {
    w: Weight,
    /// f32 copy for weights used element-wise (norm weights, biases, rope factors).
    vec: Option<Vec<f32>>,
}

/// Raw view of the arena handing out disjoint slices (see the module doc for why they are).
struct Arena {
    base: *mut f32,
    stride: usize,
}

impl Arena {
    /// # Safety
    /// Callers must only request ranges of nodes whose column ranges are disjoint from every
    /// mutable range handed out at the same time (guaranteed by the plan), within the arena.
    unsafe fn get<'a>(&self, off_cols: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: off_cols * stride + len <= arena length by construction of the plan and
        // `ensure_rows`; disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off_cols * self.stride), len) }
    }
}

/// Row-wise ops on at least this many values are split over the thread pool by rows.
const PAR_MIN_VALUES: usize = 1 << 14;

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
    let base = rocmforge_cpu::SyncPtr(out.as_mut_ptr());
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

pub struct CpuBackend {
    weights: Vec<Option<WeightSlot>>,
    arena: Vec<f32>,
    row_cap: usize,
    peak_cols: usize,
    kv: KvCache,
    kv_cfg: KvConfig,
    layout: KvLayout,
    /// fp8 scales per model layer (empty: the cache's 1.0).
    kv_scales: Vec<Option<KvHeadScales>>,
    pool: &'static ThreadPool,
}

impl CpuBackend {
    /// Load the graph's weights from `src` (f32 copies of element-wise ones), allocate the KV
    /// cache and an arena for batches of up to `max_batch_tokens` tokens.
    pub fn new(
        g: &Graph,
        p: &Plan,
        src: &ModelSource,
        kv_cfg: KvConfig,
        layout: &KvLayout,
        kv_type: KvCacheType,
        max_batch_tokens: usize,
    ) -> Result<CpuBackend, RuntimeError> {
        let mut weights: Vec<Option<WeightSlot>> = Vec::with_capacity(g.nodes.len());
        for (i, node) in g.nodes.iter().enumerate() {
            if let Op::Weight { tensor } = &node.op {
                let w = src.weight(tensor)?;
                let vec = if p.needs_vec[i] { Some(w.to_f32()?) } else { None };
                if !p.needs_vec[i] && !matches!(w.ty, GgmlType::F32) && !rocmforge_quant::can_dequantize(w.ty) {
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
        // LATENT_ATTENTION layers read V from K: the cache stores K rows only.
        let make = if geo.v_in_k { KvCache::with_v_in_k } else { KvCache::with_type };
        let kv = make(kv_type, layout.n_slots(), geo.n_head_kv, geo.head_dim_k, geo.head_dim_v, kv_cfg.block_size, kv_cfg.n_blocks)
            .map_err(|e| RuntimeError::KvCache(e.to_string()))?;
        let layout = layout.clone();
        let mut be = CpuBackend {
            weights,
            arena: Vec::new(),
            row_cap: 0,
            peak_cols: p.peak_cols,
            kv,
            kv_cfg,
            layout,
            kv_scales: Vec::new(),
            pool: ThreadPool::global(),
        };
        be.ensure_rows(max_batch_tokens.max(1));
        Ok(be)
    }

    fn ensure_rows(&mut self, rows: usize) {
        if rows > self.row_cap {
            if self.row_cap > 0 {
                tracing::debug!("CPU arena grows from {} to {} rows", self.row_cap, rows.next_power_of_two());
            }
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
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("CPU ({:?}, {} threads)", rocmforge_cpu::Isa::detect(), self.pool.n_threads())
    }

    fn kv_config(&self) -> KvConfig {
        self.kv_cfg
    }

    fn set_kv_scales(&mut self, scales: &KvScales) -> Result<(), RuntimeError> {
        self.kv_scales = scales.layers.clone();
        Ok(())
    }

    fn forward(&mut self, g: &Graph, p: &Plan, b: &BatchMeta, dump: Option<&Dump>) -> Result<&[f32], RuntimeError> {
        let (n_tokens, n_outputs, n_seqs) = (b.n_tokens(), b.n_outputs(), b.n_seqs());
        if n_tokens == 0 {
            return Ok(&[]);
        }
        self.ensure_rows(n_tokens.max(n_seqs));
        // Lay the nodes out with the stride this batch needs, not the largest batch seen (see
        // the module header). Any stride >= the batch's rows keeps live ranges disjoint.
        let stride = n_tokens.next_power_of_two().max(8).min(self.row_cap);
        let arena = Arena { base: self.arena.as_mut_ptr(), stride };
        let rows_of = |r: Rows| match r {
            Rows::Tokens => n_tokens,
            Rows::Outputs => n_outputs,
            Rows::Seqs => n_seqs,
        };
        let pool = self.pool;
        let act = |j: usize| -> &[f32] {
            let (r, c) = match g.nodes[j].shape {
                Shape::Act { rows, cols } => (rows_of(rows), cols),
                Shape::Weight(_) => unreachable!("graph validated: activation input"),
            };
            // SAFETY: input j is live and disjoint from any output being written; read-only here.
            unsafe { arena.get(p.col_off[j], r * c) }
        };
        for step in &p.steps {
            if let Step::MatMulGroup(group) = step {
                // Sibling projections of one input (Q/K/V, gate/up): one call, one
                // quantization, one thread-pool job; same numbers as one by one.
                let node = &g.nodes[group[0]];
                let map_err = |e: rocmforge_cpu::CpuError| RuntimeError::Kernel { node: node.name.clone(), what: e.to_string() };
                let Op::MatMul { x, .. } = node.op else { unreachable!("plan: a group of MATMULs") };
                let mut outs = Vec::with_capacity(group.len());
                let mut k = 0;
                let mut rows = 0;
                for &j in group {
                    let Op::MatMul { w: wj, bias: bj, .. } = g.nodes[j].op else { unreachable!("plan: a group of MATMULs") };
                    let Shape::Act { rows: rj, cols: cj } = g.nodes[j].shape else { unreachable!("plan: a group of MATMULs") };
                    rows = rows_of(rj);
                    let wsj = &self.wslot(wj).w;
                    k = wsj.dims[0];
                    outs.push(rocmforge_cpu::MatmulOut {
                        ty: wsj.ty,
                        w: wsj.bytes.as_slice(),
                        n_out: cj,
                        bias: bj.map(|b| self.wvec(b)),
                        // SAFETY: the plan checked these column ranges are pairwise disjoint
                        // and disjoint from x's.
                        y: unsafe { arena.get(p.col_off[j], rows * cj) },
                    });
                }
                rocmforge_cpu::matmul_many(pool, k, act(x), rows, &mut outs).map_err(map_err)?;
            } else {
                let i = step.nodes()[0];
                let node = &g.nodes[i];
                let Shape::Act { rows, cols } = node.shape else { continue };
                let rows = rows_of(rows);
                // SAFETY: node i's column range is disjoint from every live input's (plan invariant).
                let out = unsafe { arena.get(p.col_off[i], rows * cols) };
                let map_err = |e: rocmforge_cpu::CpuError| RuntimeError::Kernel { node: node.name.clone(), what: e.to_string() };
                match &node.op {
                    Op::Weight { .. } => {}
                    Op::MoeRoute { logits, n_expert, k, routing } => {
                        super::moe_route::route(act(*logits), *n_expert, *k, routing, routing.bias.map(|b| self.wvec(b)), out)
                    }
                    Op::HeadMatMul { x, w, n_head, k, m } => {
                        let ws = &self.wslot(*w).w;
                        rocmforge_cpu::head_matmul(pool, ws.ty, ws.bytes.as_slice(), *n_head, *k, *m, act(*x), rows, out)
                            .map_err(map_err)?;
                    }
                    Op::HeadView { x, offset, head } => {
                        let Shape::Act { cols: src_cols, .. } = g.nodes[*x].shape else { unreachable!("graph validated") };
                        let n = cols / (src_cols / head);
                        rocmforge_cpu::head_view(act(*x), src_cols, *head, *offset, n, out).map_err(map_err)?;
                    }
                    Op::Concat { a, b: bb, n_head } => {
                        let width = |j: usize| match g.nodes[j].shape {
                            Shape::Act { cols, .. } => cols / n_head,
                            Shape::Weight(_) => unreachable!("graph validated"),
                        };
                        rocmforge_cpu::head_concat(act(*a), width(*a), act(*bb), width(*bb), *n_head, out).map_err(map_err)?;
                    }
                    Op::MoeGateUp { x, route, gate, up, gate_b, up_b, k, n_ff, act: a } => {
                        let experts = super::moe::Experts {
                            gate: &self.wslot(*gate).w,
                            up: &self.wslot(*up).w,
                            gate_b: gate_b.map(|b| self.wvec(b)),
                            up_b: up_b.map(|b| self.wvec(b)),
                        };
                        super::moe::gate_up(pool, act(*x), act(*route), *k, &experts, *n_ff, *a, out).map_err(map_err)?;
                    }
                    Op::MoeDown { h, route, down, bias, k, n_ff } => {
                        let (w, b) = (&self.wslot(*down).w, bias.map(|b| self.wvec(b)));
                        super::moe::down(pool, act(*h), act(*route), *k, w, b, *n_ff, cols, out).map_err(map_err)?;
                    }
                    Op::GetRows { table, src } => {
                        let w = &self.wslot(*table).w;
                        let ids: std::borrow::Cow<[u32]> = match src {
                            RowSrc::Tokens => (&b.tokens[..]).into(),
                            RowSrc::Positions => {
                                let n_rows = w.dims.get(1).copied().unwrap_or(0);
                                if let Some(&p) = b.positions.iter().find(|&&p| p as usize >= n_rows) {
                                    return Err(RuntimeError::Batch(format!(
                                        "{}: position {p} beyond the {n_rows} positions the model has",
                                        node.name
                                    )));
                                }
                                b.positions.iter().map(|&p| p as u32).collect::<Vec<u32>>().into()
                            }
                            RowSrc::Constant(id) => vec![*id; n_tokens].into(),
                        };
                        rocmforge_cpu::get_rows(w.ty, w.bytes.as_slice(), cols, &ids, out).map_err(map_err)?;
                    }
                    Op::RmsNorm { x, w, eps, group } => {
                        let len = if *group == 0 { cols } else { *group };
                        let (xv, wv) = (act(*x), w.map(|w| self.wvec(w)));
                        par_rows(pool, rows, cols, out, |r, o| {
                            rocmforge_cpu::rms_norm(&xv[r.start * cols..r.end * cols], wv, *eps, len, o)
                        });
                    }
                    Op::LayerNorm { x, w, b, eps } => {
                        let (xv, wv, bv) = (act(*x), w.map(|w| self.wvec(w)), b.map(|b| self.wvec(b)));
                        par_rows(pool, rows, cols, out, |r, o| {
                            rocmforge_cpu::layer_norm(&xv[r.start * cols..r.end * cols], wv, bv, *eps, cols, o)
                        });
                    }
                    Op::MatMul { x, w, bias } => {
                        let ws = &self.wslot(*w).w;
                        let bias = bias.map(|b| self.wvec(b));
                        rocmforge_cpu::matmul_bias(pool, ws.ty, ws.bytes.as_slice(), cols, ws.dims[0], act(*x), rows, bias, out)
                            .map_err(map_err)?;
                    }
                    Op::Add { a, b } | Op::Mul { a, b } => {
                        let is_add = matches!(node.op, Op::Add { .. });
                        let av = act(*a);
                        let bv: &[f32] = match g.nodes[*b].shape {
                            Shape::Weight(_) => self.wvec(*b),
                            Shape::Act { .. } => act(*b),
                        };
                        // b: a weight vector (every row), an activation of a's shape, or an activation
                        // [rows, 1] (one value per row, e.g. a per-token gate). Decided by shape, not
                        // length: [rows, 1] and a vector have the same length when rows == cols.
                        let per_row = matches!(g.nodes[*b].shape, Shape::Act { cols: 1, .. }) && cols != 1;
                        par_rows(pool, rows, cols, out, |rr, out| {
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
                        par_rows(pool, rows, cols, out, |r, o| o.iter_mut().zip(&xv[r.start * cols..]).for_each(|(o, v)| *o = v * s));
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
                            yarn_exact: p.yarn_exact,
                        };
                        par_rows(pool, rows, cols, out, |r, o| {
                            rocmforge_cpu::rope(o, r.len(), p.n_head, p.head_dim, &b.positions[r.start..r.end], &params)
                        });
                    }
                    Op::Attention { q, k, v, p: p_ } => {
                        let (qa, ka, va) = (act(*q), act(*k), act(*v));
                        // V read from K (LATENT_ATTENTION): no V rows are written.
                        let vc = if p_.v_in_k { 0 } else { p_.n_head_kv * p_.head_dim_v };
                        let (qc, kc) = (p_.n_head * p_.head_dim_k, p_.n_head_kv * p_.head_dim_k);
                        let params = AttnParams {
                            causal: p_.causal,
                            sliding_window: if p_.sliding_window == 0 { None } else { Some(p_.sliding_window) },
                            scale: if p_.scale == 0.0 { None } else { Some(p_.scale) },
                            softcap: if p_.softcap == 0.0 { None } else { Some(p_.softcap) },
                            sinks: p_.sinks.map(|s| self.wvec(s).to_vec()),
                        };
                        let (group, slot) = self.layout.place(p_.layer).expect("graph validated: the layer has attention");
                        let scales = self.kv_scales.get(p_.layer).and_then(Option::as_ref);
                        for (s, c) in b.seqs.iter().enumerate() {
                            let (t0, nt, table) = (c.start, c.len, b.block_table(group, s));
                            let (k_rows, v_rows) = (&ka[t0 * kc..(t0 + nt) * kc], &va[t0 * vc..(t0 + nt) * vc]);
                            self.kv.write_scaled(slot, table, c.pos_start, k_rows, v_rows, nt, scales).map_err(map_err)?;
                            rocmforge_cpu::attention_with_scales(
                                pool,
                                rocmforge_cpu::Isa::detect(),
                                &self.kv,
                                slot,
                                table,
                                &qa[t0 * qc..(t0 + nt) * qc],
                                nt,
                                c.pos_start,
                                p_.n_head,
                                &params,
                                scales,
                                &mut out[t0 * cols..(t0 + nt) * cols],
                            )
                            .map_err(map_err)?;
                        }
                    }
                    Op::Silu { x } => {
                        let xv = act(*x);
                        par_rows(pool, rows, cols, out, |r, o| rocmforge_cpu::silu(&xv[r.start * cols..r.end * cols], o));
                    }
                    Op::Sigmoid { x } => out.iter_mut().zip(act(*x)).for_each(|(o, &v)| *o = 1.0 / (1.0 + (-v).exp())),
                    Op::Gelu { x } => {
                        let xv = act(*x);
                        par_rows(pool, rows, cols, out, |r, o| rocmforge_cpu::gelu(&xv[r.start * cols..r.end * cols], o));
                    }
                    Op::GeluErf { x } => {
                        let xv = act(*x);
                        par_rows(pool, rows, cols, out, |r, o| rocmforge_cpu::gelu_erf(&xv[r.start * cols..r.end * cols], o));
                    }
                    Op::SwiGlu { gate, up } => {
                        let (g, u) = (act(*gate), act(*up));
                        par_rows(pool, rows, cols, out, |r, o| {
                            rocmforge_cpu::swiglu(&g[r.start * cols..r.end * cols], &u[r.start * cols..r.end * cols], o)
                        });
                    }
                    Op::GeGlu { gate, up } => {
                        let (g, u) = (act(*gate), act(*up));
                        par_rows(pool, rows, cols, out, |r, o| {
                            rocmforge_cpu::geglu(&g[r.start * cols..r.end * cols], &u[r.start * cols..r.end * cols], o)
                        });
                    }
                    Op::Softcap { x, cap } => {
                        out.copy_from_slice(act(*x));
                        rocmforge_cpu::softcap(out, *cap);
                    }
                    Op::View { x, offset } => {
                        let src_cols = match g.nodes[*x].shape {
                            Shape::Act { cols, .. } => cols,
                            Shape::Weight(_) => unreachable!("graph validated"),
                        };
                        for (orow, srow) in out.chunks_exact_mut(cols).zip(act(*x).chunks_exact(src_cols)) {
                            orow.copy_from_slice(&srow[*offset..*offset + cols]);
                        }
                    }
                    Op::OutputRows { x } => {
                        let src = act(*x);
                        for (orow, &t) in out.chunks_exact_mut(cols).zip(&b.out_ids) {
                            orow.copy_from_slice(&src[t * cols..(t + 1) * cols]);
                        }
                    }
                    Op::Output { x } => out.copy_from_slice(act(*x)),
                    Op::Pool { x, mode } => {
                        let src = act(*x);
                        for (orow, c) in out.chunks_exact_mut(cols).zip(&b.seqs) {
                            let (t0, nt) = (c.start, c.len);
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
                        }
                    }
                    Op::L2Norm { x, eps } => {
                        for (orow, xrow) in out.chunks_exact_mut(cols).zip(act(*x).chunks_exact(cols)) {
                            let norm = xrow.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt().max(*eps as f64);
                            orow.iter_mut().zip(xrow).for_each(|(o, &v)| *o = (v as f64 / norm) as f32);
                        }
                    }
                }
            }
            if let Some(d) = dump {
                for &j in step.nodes() {
                    let n = &g.nodes[j];
                    let Shape::Act { rows, cols } = n.shape else { continue };
                    if d.wants(&n.name) {
                        // SAFETY: node j was just written and is read-only here; no mutable
                        // slice of the arena is alive at this point.
                        let data = unsafe { arena.get(p.col_off[j], rows_of(rows) * cols) };
                        d.write(j, n, rows_of(rows), cols, data)?;
                    }
                }
            }
        }
        let Some(o) = g.output else { return Ok(&[]) };
        let Shape::Act { rows, cols } = g.nodes[o].shape else { return Ok(&[]) };
        let len = rows_of(rows) * cols;
        let off = p.col_off[o] * stride;
        Ok(&self.arena[off..off + len])
    }
}
