//! The graph IR: what a plugin records through the ABI, shape-checked as it is recorded.
//!
//! Every activation is a row-major matrix `[rows, cols]` whose row count is symbolic: either the
//! batch's tokens (`Rows::Tokens`) or the rows whose outputs were asked for (`Rows::Outputs`, after
//! an OUTPUT_ROWS op). Column counts are fixed when the graph is built, so every shape mismatch is
//! found at load time with the node's name, never as garbage at run time. Weights are leaves with
//! GGUF dims (ne0 first). Nodes are stored in recording order, which is a valid execution order.
//!
//! Encoders (BERT): GET_ROWS may look up positions or a constant id instead of tokens; POOL turns
//! token rows into one row per sequence (`Rows::Seqs`); OUTPUT's kind says whether the result is
//! logits or embeddings ([`Graph::embedding`]).

use rocmforge_abi::{op, output_kind, pool, rows_src};

use crate::kv_layout::KvKind;
use crate::op_spec::{check_slots, OpRecord};
use crate::RuntimeError;

/// Symbolic row count of an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    Tokens,
    Outputs,
    /// One row per sequence of the batch (after POOL).
    Seqs,
}

/// Which ids a GET_ROWS looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowSrc {
    Tokens,
    Positions,
    Constant(u32),
}

/// How POOL reduces a sequence's token rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Mean,
    Cls,
    Last,
}

/// Decoded op with typed parameters (the ABI's slot layout is decoded once, here).
#[derive(Clone, Debug)]
pub enum Op {
    Weight {
        tensor: String,
    },
    GetRows {
        table: usize,
        src: RowSrc,
    },
    RmsNorm {
        x: usize,
        w: Option<usize>,
        eps: f32,
        group: usize,
    },
    LayerNorm {
        x: usize,
        w: Option<usize>,
        b: Option<usize>,
        eps: f32,
    },
    MatMul {
        x: usize,
        w: usize,
        bias: Option<usize>,
    },
    Add {
        a: usize,
        b: usize,
    },
    Mul {
        a: usize,
        b: usize,
    },
    Scale {
        x: usize,
        s: f32,
    },
    Rope {
        x: usize,
        freq_factors: Option<usize>,
        p: RopeP,
    },
    Attention {
        q: usize,
        k: usize,
        v: usize,
        p: AttnP,
    },
    Silu {
        x: usize,
    },
    Gelu {
        x: usize,
    },
    GeluErf {
        x: usize,
    },
    SwiGlu {
        gate: usize,
        up: usize,
    },
    GeGlu {
        gate: usize,
        up: usize,
    },
    Softcap {
        x: usize,
        cap: f32,
    },
    View {
        x: usize,
        offset: usize,
    },
    OutputRows {
        x: usize,
    },
    Output {
        x: usize,
    },
    /// Top-k routing: `logits [n, n_expert]` -> `[n, 2k]` (k weights, then k expert ids).
    MoeRoute {
        logits: usize,
        n_expert: usize,
        k: usize,
        routing: MoeRouting,
    },
    /// Selected experts' `act(x·gate_e + gate_b_e, x·up_e + up_b_e)` -> `[n, k·n_ff]`.
    MoeGateUp {
        x: usize,
        route: usize,
        gate: usize,
        up: usize,
        /// Per-expert biases `[n_ff, n_expert]` (appended slots 4, 5).
        gate_b: Option<usize>,
        up_b: Option<usize>,
        k: usize,
        n_ff: usize,
        act: MoeAct,
    },
    /// `Σ_s w_s · (h_s · down_e + b_e)` -> `[n, n_embd]`.
    MoeDown {
        h: usize,
        route: usize,
        down: usize,
        /// Per-expert bias `[n_embd, n_expert]` (appended slot 3).
        bias: Option<usize>,
        k: usize,
        n_ff: usize,
    },
    Sigmoid {
        x: usize,
    },
    /// Columns `[offset, offset + cols)` of every `head`-wide head of `x` (VIEW with a head width).
    HeadView {
        x: usize,
        offset: usize,
        head: usize,
    },
    /// Per head `h`: `x_h [n, k] · W_hᵀ` with `w` `[k, m, n_head]` -> `[n, n_head·m]`.
    HeadMatMul {
        x: usize,
        w: usize,
        n_head: usize,
        k: usize,
        m: usize,
    },
    /// Per head `h`: `[a_h | b_h]` -> `[n, n_head·(ka + kb)]`.
    Concat {
        a: usize,
        b: usize,
        n_head: usize,
    },
    Pool {
        x: usize,
        mode: PoolMode,
    },
    L2Norm {
        x: usize,
        eps: f32,
    },
}

/// How MOE_ROUTE scores experts and weighs the chosen ones (`backend/moe.rs` has the definition).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeRouting {
    /// Sigmoid scores (else a softmax over all experts).
    pub sigmoid: bool,
    /// Divide the k weights by their sum.
    pub renorm: bool,
    /// A weight `[n_expert]` added to the scores for the choice only (not to the weights).
    pub bias: Option<usize>,
    /// Group-limited choice: experts in `n_group` equal groups, of which only the best
    /// `n_group_used` take part (`n_group` <= 1: no groups).
    pub n_group: usize,
    pub n_group_used: usize,
    /// A group's score: the sum of its two best scores (else its best score).
    pub group_top2: bool,
    /// Multiplies the k weights (after renormalising).
    pub scale: f32,
}

/// The gated activation of MOE_GATE_UP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MoeAct {
    /// `silu(gate) * up`.
    SwiGlu,
    /// `gelu_tanh(gate) * up`.
    GeGlu,
    /// gpt-oss: `(clamp(up, -limit, limit) + 1) · g · sigmoid(alpha · g)`, `g = min(gate, limit)`.
    SwiGluOai { alpha: f32, limit: f32 },
}

#[derive(Clone, Debug)]
pub struct RopeP {
    pub n_head: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub neox: bool,
    pub n_ctx_orig: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// YaRN's correction range unrounded (transformers' `truncate = False`).
    pub yarn_exact: bool,
}

#[derive(Clone, Debug)]
pub struct AttnP {
    pub layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub sliding_window: usize,
    pub causal: bool,
    pub scale: f32,
    pub softcap: f32,
    /// Attention sinks: a weight of `n_head` logits joining each softmax's denominator.
    pub sinks: Option<usize>,
    /// LATENT_ATTENTION: V is the first `head_dim_v` columns of K (`k` and `v` are one node and
    /// the cache stores K only).
    pub v_in_k: bool,
}

/// Shape of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A weight tensor with GGUF dims.
    Weight(Vec<usize>),
    /// An activation `[rows, cols]`.
    Act { rows: Rows, cols: usize },
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub shape: Shape,
}

/// KV geometry and kind of one attention layer, collected from ATTENTION ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerKv {
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    /// Full, or sliding window: the op's window when it is causal (an encoder's non-causal
    /// window also reads ahead, and its sequences run whole: full).
    pub kind: KvKind,
    /// V is read from K's first `head_dim_v` columns: no V rows are stored (LATENT_ATTENTION).
    pub v_in_k: bool,
}

impl LayerKv {
    /// Same K/V row sizes (the backends keep one geometry for every layer).
    pub fn same_geometry(&self, o: &LayerKv) -> bool {
        (self.n_head_kv, self.head_dim_k, self.head_dim_v, self.v_in_k) == (o.n_head_kv, o.head_dim_k, o.head_dim_v, o.v_in_k)
    }

    /// Cache bytes of one token of this layer, given the bytes of a row of `d` elements.
    pub fn bytes_per_token(&self, row_bytes: impl Fn(usize) -> usize) -> usize {
        self.n_head_kv * (row_bytes(self.head_dim_k) + if self.v_in_k { 0 } else { row_bytes(self.head_dim_v) })
    }
}

/// A shape-checked graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub output: Option<usize>,
    /// Per layer index (as given by ATTENTION ops).
    pub layers: Vec<Option<LayerKv>>,
    /// OUTPUT kind: embeddings (true) or logits.
    pub embedding: bool,
}

impl Graph {
    pub fn weight_dims(&self, id: usize) -> Option<&[usize]> {
        match &self.nodes.get(id)?.shape {
            Shape::Weight(d) => Some(d),
            _ => None,
        }
    }

    fn act(&self, id: usize, what: &str, at: &str) -> Result<(Rows, usize), RuntimeError> {
        match self.nodes.get(id).map(|n| &n.shape) {
            Some(Shape::Act { rows, cols }) => Ok((*rows, *cols)),
            Some(Shape::Weight(_)) => Err(graph_err(at, format!("{what} must be an activation, got weight '{}'", self.nodes[id].name))),
            None => Err(graph_err(at, format!("{what}: unknown node {id}"))),
        }
    }

    fn weight(&self, id: usize, what: &str, at: &str) -> Result<&[usize], RuntimeError> {
        match self.nodes.get(id).map(|n| &n.shape) {
            Some(Shape::Weight(d)) => Ok(d),
            Some(Shape::Act { .. }) => Err(graph_err(at, format!("{what} must be a weight, got activation '{}'", self.nodes[id].name))),
            None => Err(graph_err(at, format!("{what}: unknown node {id}"))),
        }
    }

    fn vector(&self, id: usize, len: usize, what: &str, at: &str) -> Result<(), RuntimeError> {
        let d = self.weight(id, what, at)?;
        let n: usize = d.iter().product();
        if n != len {
            return Err(graph_err(at, format!("{what} '{}' has {n} elements, expected {len}", self.nodes[id].name)));
        }
        Ok(())
    }

    /// Decode, check and append an op recorded through the ABI. `weight_dims` resolves a tensor
    /// name to its GGUF dims (None: the model has no such tensor). Slots the op does not read
    /// must be unused ([`check_slots`]), so the decoding below can ignore them.
    pub fn push(
        &mut self,
        raw: &OpRecord,
        name: String,
        tensor: String,
        weight_dims: impl Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<usize, RuntimeError> {
        let at = name.as_str();
        check_slots(raw, &tensor).map_err(|what| graph_err(at, what))?;
        let inp = |i: usize| -> Option<usize> {
            let v = raw.inputs[i];
            (v != rocmforge_abi::NO_NODE).then_some(v as usize)
        };
        let req = |i: usize| -> Result<usize, RuntimeError> { inp(i).ok_or_else(|| graph_err(at, format!("input {i} is required"))) };
        let ip = |i: usize| -> Result<usize, RuntimeError> {
            usize::try_from(raw.iparams[i]).map_err(|_| graph_err(at, format!("integer parameter {i} = {} is negative", raw.iparams[i])))
        };
        let fp = |i: usize| raw.fparams[i];
        let (op, shape) = match raw.code {
            op::WEIGHT => {
                let dims = weight_dims(&tensor).ok_or_else(|| RuntimeError::MissingTensor { name: tensor.clone() })?;
                (Op::Weight { tensor }, Shape::Weight(dims))
            }
            op::GET_ROWS => {
                let t = req(0)?;
                let d = self.weight(t, "table", at)?;
                if d.len() != 2 {
                    return Err(graph_err(at, format!("embedding table must be 2-D, has dims {d:?}")));
                }
                let cols = d[0];
                let src = match raw.iparams[0] {
                    rows_src::TOKENS => RowSrc::Tokens,
                    rows_src::POSITIONS => RowSrc::Positions,
                    rows_src::CONSTANT => {
                        let id = u32::try_from(raw.iparams[1]).ok().filter(|&id| (id as usize) < d[1]);
                        RowSrc::Constant(
                            id.ok_or_else(|| graph_err(at, format!("constant row {} outside a table of {} rows", raw.iparams[1], d[1])))?,
                        )
                    }
                    other => return Err(graph_err(at, format!("unknown GET_ROWS source {other}"))),
                };
                (Op::GetRows { table: t, src }, Shape::Act { rows: Rows::Tokens, cols })
            }
            op::RMS_NORM | op::LAYER_NORM => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                let group = if raw.code == op::RMS_NORM { ip(0)? } else { 0 };
                let norm_len = if group == 0 { cols } else { group };
                if cols % norm_len != 0 {
                    return Err(graph_err(at, format!("row of {cols} is not a multiple of the norm group {group}")));
                }
                if let Some(w) = inp(1) {
                    self.vector(w, norm_len, "norm weight", at)?;
                }
                if raw.code == op::RMS_NORM {
                    (Op::RmsNorm { x, w: inp(1), eps: fp(0), group }, Shape::Act { rows, cols })
                } else {
                    if let Some(b) = inp(2) {
                        self.vector(b, cols, "norm bias", at)?;
                    }
                    (Op::LayerNorm { x, w: inp(1), b: inp(2), eps: fp(0) }, Shape::Act { rows, cols })
                }
            }
            op::MATMUL => {
                let (x, w) = (req(0)?, req(1)?);
                let (rows, k) = self.act(x, "x", at)?;
                let d = self.weight(w, "w", at)?;
                // A 1-D weight [k] is a matrix [k, 1] (one output column, e.g. a per-token gate).
                if !(d.len() == 2 || d.len() == 1) || d[0] != k {
                    return Err(graph_err(at, format!("weight '{}' dims {d:?} do not take rows of {k}", self.nodes[w].name)));
                }
                let n_out = d.get(1).copied().unwrap_or(1);
                if let Some(b) = inp(2) {
                    self.vector(b, n_out, "bias", at)?;
                }
                (Op::MatMul { x, w, bias: inp(2) }, Shape::Act { rows, cols: n_out })
            }
            op::ADD | op::MUL => {
                let (a, b) = (req(0)?, req(1)?);
                let (rows, cols) = self.act(a, "a", at)?;
                match &self.nodes.get(b).map(|n| &n.shape) {
                    Some(Shape::Act { rows: rb, cols: cb }) if *rb == rows && (*cb == cols || *cb == 1) => {}
                    Some(Shape::Weight(_)) => self.vector(b, cols, "b", at)?,
                    _ => return Err(graph_err(at, format!("operand b does not match [{rows:?}, {cols}]"))),
                }
                let op = if raw.code == op::ADD { Op::Add { a, b } } else { Op::Mul { a, b } };
                (op, Shape::Act { rows, cols })
            }
            op::SCALE => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                (Op::Scale { x, s: fp(0) }, Shape::Act { rows, cols })
            }
            op::ROPE => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                // Only the two styles the ABI defines; any other value (ggml's mrope/vision
                // modes, a typo) must not silently run as interleaved RoPE.
                let mode = raw.iparams[3];
                if mode != 0 && mode != 2 {
                    return Err(graph_err(at, format!("rope mode {mode} is not supported (0 = interleaved pairs, 2 = NeoX halves)")));
                }
                let p = RopeP {
                    n_head: ip(0)?,
                    head_dim: ip(1)?,
                    n_rot: ip(2)?,
                    neox: raw.iparams[3] == 2,
                    n_ctx_orig: ip(4)?,
                    freq_base: fp(0),
                    freq_scale: fp(1),
                    ext_factor: fp(2),
                    attn_factor: fp(3),
                    beta_fast: fp(4),
                    beta_slow: fp(5),
                    // The enumerated slot was checked by `check_slots`.
                    yarn_exact: raw.iparams[5] == rocmforge_abi::rope_yarn::EXACT,
                };
                if mul(at, p.n_head, p.head_dim)? != cols {
                    return Err(graph_err(at, format!("{} heads × {} ≠ row of {cols}", p.n_head, p.head_dim)));
                }
                if p.n_rot > p.head_dim || p.n_rot % 2 != 0 {
                    return Err(graph_err(at, format!("n_rot {} must be even and ≤ head_dim {}", p.n_rot, p.head_dim)));
                }
                if rows != Rows::Tokens {
                    return Err(graph_err(at, "rope runs on token rows".into()));
                }
                if let Some(f) = inp(1) {
                    self.vector(f, p.n_rot / 2, "rope freq factors", at)?;
                }
                (Op::Rope { x, freq_factors: inp(1), p }, Shape::Act { rows, cols })
            }
            op::ATTENTION | op::LATENT_ATTENTION => {
                // LATENT_ATTENTION: inputs q, kv; V is the first head_dim_v columns of K.
                let latent = raw.code == op::LATENT_ATTENTION;
                let (q, k) = (req(0)?, req(1)?);
                let v = if latent { k } else { req(2)? };
                let p = AttnP {
                    layer: ip(0)?,
                    n_head: ip(1)?,
                    n_head_kv: ip(2)?,
                    head_dim_k: ip(3)?,
                    head_dim_v: ip(4)?,
                    sliding_window: ip(5)?,
                    causal: raw.iparams[6] != 0,
                    scale: fp(0),
                    softcap: fp(1),
                    sinks: if latent { None } else { inp(3) },
                    v_in_k: latent,
                };
                if p.n_head_kv == 0 || p.n_head % p.n_head_kv != 0 {
                    return Err(graph_err(at, format!("n_head {} is not a multiple of n_head_kv {}", p.n_head, p.n_head_kv)));
                }
                if latent && !(1..=p.head_dim_k).contains(&p.head_dim_v) {
                    return Err(graph_err(at, format!("head_dim_v {} must be in 1..={} (V is read from K)", p.head_dim_v, p.head_dim_k)));
                }
                if let Some(s) = p.sinks {
                    self.vector(s, p.n_head, "attention sinks", at)?;
                }
                for (id, want, what) in [
                    (q, mul(at, p.n_head, p.head_dim_k)?, "q"),
                    (k, mul(at, p.n_head_kv, p.head_dim_k)?, "k"),
                    (v, mul(at, p.n_head_kv, if latent { p.head_dim_k } else { p.head_dim_v })?, "v"),
                ] {
                    let (rows, cols) = self.act(id, what, at)?;
                    if rows != Rows::Tokens || cols != want {
                        return Err(graph_err(at, format!("{what} is [{rows:?}, {cols}], expected [Tokens, {want}]")));
                    }
                }
                if self.layers.len() <= p.layer {
                    self.layers.resize(p.layer + 1, None);
                }
                if self.layers[p.layer].is_some() {
                    return Err(graph_err(at, format!("layer {} has two attention ops", p.layer)));
                }
                let kind = if p.causal && p.sliding_window > 0 { KvKind::Sliding(p.sliding_window) } else { KvKind::Full };
                self.layers[p.layer] =
                    Some(LayerKv { n_head_kv: p.n_head_kv, head_dim_k: p.head_dim_k, head_dim_v: p.head_dim_v, kind, v_in_k: latent });
                let cols = mul(at, p.n_head, p.head_dim_v)?;
                (Op::Attention { q, k, v, p }, Shape::Act { rows: Rows::Tokens, cols })
            }
            op::SILU | op::GELU | op::GELU_ERF | op::SIGMOID => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                let op = match raw.code {
                    op::SILU => Op::Silu { x },
                    op::SIGMOID => Op::Sigmoid { x },
                    op::GELU => Op::Gelu { x },
                    _ => Op::GeluErf { x },
                };
                (op, Shape::Act { rows, cols })
            }
            op::SWIGLU | op::GEGLU => {
                let (g, u) = (req(0)?, req(1)?);
                let (rows, cols) = self.act(g, "gate", at)?;
                if self.act(u, "up", at)? != (rows, cols) {
                    return Err(graph_err(at, "gate and up differ in shape".into()));
                }
                let op = if raw.code == op::SWIGLU { Op::SwiGlu { gate: g, up: u } } else { Op::GeGlu { gate: g, up: u } };
                (op, Shape::Act { rows, cols })
            }
            op::SOFTCAP => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                if !(fp(0) > 0.0) {
                    return Err(graph_err(at, format!("softcap {} must be positive", fp(0))));
                }
                (Op::Softcap { x, cap: fp(0) }, Shape::Act { rows, cols })
            }
            op::VIEW => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                let (offset, n, head) = (ip(0)?, ip(1)?, ip(2)?);
                // A head width (appended slot) views the same columns of every head.
                let width = if head == 0 { cols } else { head };
                if n == 0 || offset.checked_add(n).is_none_or(|e| e > width) || !cols.is_multiple_of(width) {
                    return Err(graph_err(at, format!("view [{offset}, {offset}+{n}) outside a head of {width} in a row of {cols}")));
                }
                if head == 0 {
                    (Op::View { x, offset }, Shape::Act { rows, cols: n })
                } else {
                    (Op::HeadView { x, offset, head }, Shape::Act { rows, cols: mul(at, cols / head, n)? })
                }
            }
            op::OUTPUT_ROWS => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                if rows != Rows::Tokens {
                    return Err(graph_err(at, format!("output rows are selected from token rows, got {rows:?}")));
                }
                (Op::OutputRows { x }, Shape::Act { rows: Rows::Outputs, cols })
            }
            op::OUTPUT => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                if self.output.is_some() {
                    return Err(graph_err(at, "graph has two outputs".into()));
                }
                self.embedding = match raw.iparams[0] {
                    output_kind::LOGITS => false,
                    output_kind::EMBEDDING => true,
                    other => return Err(graph_err(at, format!("unknown OUTPUT kind {other}"))),
                };
                self.output = Some(self.nodes.len());
                (Op::Output { x }, Shape::Act { rows, cols })
            }
            op::POOL => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                if rows != Rows::Tokens {
                    return Err(graph_err(at, format!("pool runs on token rows, got {rows:?}")));
                }
                let mode = match raw.iparams[0] {
                    pool::MEAN => PoolMode::Mean,
                    pool::CLS => PoolMode::Cls,
                    pool::LAST => PoolMode::Last,
                    other => return Err(graph_err(at, format!("unknown pool mode {other} (1 = mean, 2 = cls, 3 = last)"))),
                };
                (Op::Pool { x, mode }, Shape::Act { rows: Rows::Seqs, cols })
            }
            op::L2_NORM => {
                let x = req(0)?;
                let (rows, cols) = self.act(x, "x", at)?;
                (Op::L2Norm { x, eps: fp(0) }, Shape::Act { rows, cols })
            }
            op::MOE_ROUTE => {
                let logits = req(0)?;
                let (rows, n_expert) = self.act(logits, "logits", at)?;
                let k = ip(0)?;
                if k == 0 || k > n_expert {
                    return Err(graph_err(at, format!("{k} experts used out of {n_expert}")));
                }
                use rocmforge_abi::moe_gating as gating;
                let (sigmoid, renorm) = match raw.iparams[1] {
                    gating::SOFTMAX => (false, false),
                    gating::SOFTMAX_NORM => (false, true),
                    gating::SIGMOID => (true, false),
                    gating::SIGMOID_NORM => (true, true),
                    other => return Err(graph_err(at, format!("unknown MoE gating {other}"))),
                };
                let bias = inp(1);
                if let Some(b) = bias {
                    self.vector(b, n_expert, "selection bias", at)?;
                }
                let (n_group, n_group_used) = (ip(2)?, ip(3)?);
                let group_top2 = raw.iparams[4] == rocmforge_abi::moe_group::TOP2_SUM;
                if n_group > 1 {
                    let per = n_expert / n_group;
                    if n_expert % n_group != 0 || n_group_used == 0 || n_group_used > n_group {
                        return Err(graph_err(
                            at,
                            format!("{n_expert} experts in {n_group} groups, {n_group_used} kept: not a valid grouping"),
                        ));
                    }
                    if k > n_group_used * per || (group_top2 && per < 2) {
                        return Err(graph_err(
                            at,
                            format!("{k} experts used, but {n_group_used} groups of {per} are kept (top-two scores need 2 per group)"),
                        ));
                    }
                }
                // 0 (unset, as older plugins leave it) means no scaling.
                let scale = if fp(0) == 0.0 { 1.0 } else { fp(0) };
                if !scale.is_finite() {
                    return Err(graph_err(at, format!("MoE weight scale {scale} is not finite")));
                }
                let routing = MoeRouting { sigmoid, renorm, bias, n_group, n_group_used, group_top2, scale };
                (Op::MoeRoute { logits, n_expert, k, routing }, Shape::Act { rows, cols: 2 * k })
            }
            op::MOE_GATE_UP | op::MOE_DOWN => {
                let (x, route) = (req(0)?, req(1)?);
                let (rows, cols) = self.act(x, "x", at)?;
                let k = ip(0)?;
                // The route must come from MOE_ROUTE: its ids are then valid expert indices.
                let (n_expert, rk) = match self.nodes.get(route).map(|n| (&n.op, &n.shape)) {
                    Some((Op::MoeRoute { n_expert, k, .. }, Shape::Act { rows: rr, .. })) if *rr == rows => (*n_expert, *k),
                    _ => return Err(graph_err(at, "route must be a MOE_ROUTE node over the same rows".into())),
                };
                if rk != k {
                    return Err(graph_err(at, format!("{k} experts used, but the route selects {rk}")));
                }
                let w_in = |i: usize, what: &str| -> Result<(usize, usize), RuntimeError> {
                    let w = req(i)?;
                    let d = self.weight(w, what, at)?;
                    if d.len() != 3 || d[2] != n_expert {
                        return Err(graph_err(at, format!("{what} '{}' dims {d:?} are not [_, _, {n_expert}]", self.nodes[w].name)));
                    }
                    Ok((d[0], d[1]))
                };
                // A per-expert bias: a weight [len, n_expert].
                let bias_in = |i: usize, len: usize, what: &str| -> Result<Option<usize>, RuntimeError> {
                    let Some(b) = inp(i) else { return Ok(None) };
                    let d = self.weight(b, what, at)?;
                    if d != [len, n_expert] {
                        return Err(graph_err(at, format!("{what} '{}' dims {d:?} are not [{len}, {n_expert}]", self.nodes[b].name)));
                    }
                    Ok(Some(b))
                };
                if raw.code == op::MOE_GATE_UP {
                    let (gk, n_ff) = w_in(2, "gate_exps")?;
                    if gk != cols || w_in(3, "up_exps")? != (gk, n_ff) {
                        return Err(graph_err(at, format!("expert gate/up weights do not take rows of {cols} to the same n_ff {n_ff}")));
                    }
                    let (alpha, limit) = (fp(0), fp(1));
                    let act = match raw.iparams[1] {
                        rocmforge_abi::moe_act::SWIGLU => MoeAct::SwiGlu,
                        rocmforge_abi::moe_act::GEGLU => MoeAct::GeGlu,
                        rocmforge_abi::moe_act::SWIGLU_OAI => {
                            if !(alpha.is_finite() && limit.is_finite() && limit > 0.0) {
                                return Err(graph_err(
                                    at,
                                    format!("clamped SwiGLU needs a finite alpha and a positive limit, got {alpha}, {limit}"),
                                ));
                            }
                            MoeAct::SwiGluOai { alpha, limit }
                        }
                        other => return Err(graph_err(at, format!("unknown MoE activation {other}"))),
                    };
                    if !matches!(act, MoeAct::SwiGluOai { .. }) && (alpha != 0.0 || limit != 0.0) {
                        return Err(graph_err(
                            at,
                            format!("alpha/limit ({alpha}, {limit}) are read only by the clamped SwiGLU; must be 0"),
                        ));
                    }
                    let (gate, up) = (req(2)?, req(3)?);
                    let (gate_b, up_b) = (bias_in(4, n_ff, "gate_exps bias")?, bias_in(5, n_ff, "up_exps bias")?);
                    let cols = mul(at, k, n_ff)?;
                    (Op::MoeGateUp { x, route, gate, up, gate_b, up_b, k, n_ff, act }, Shape::Act { rows, cols })
                } else {
                    let (n_ff, n_embd) = w_in(2, "down_exps")?;
                    if cols != mul(at, k, n_ff)? {
                        return Err(graph_err(at, format!("h has {cols} columns, expected {k} × n_ff {n_ff}")));
                    }
                    let bias = bias_in(3, n_embd, "down_exps bias")?;
                    (Op::MoeDown { h: x, route, down: req(2)?, bias, k, n_ff }, Shape::Act { rows, cols: n_embd })
                }
            }
            op::HEAD_MATMUL => {
                let (x, w) = (req(0)?, req(1)?);
                let (rows, cols) = self.act(x, "x", at)?;
                let d = self.weight(w, "w", at)?;
                let [k, m, n_head] = *d else {
                    return Err(graph_err(at, format!("weight '{}' dims {d:?} are not [k, m, n_head]", self.nodes[w].name)));
                };
                if k == 0 || m == 0 || mul(at, k, n_head)? != cols {
                    return Err(graph_err(
                        at,
                        format!("weight '{}' dims {d:?} do not take rows of {cols} ({n_head} heads)", self.nodes[w].name),
                    ));
                }
                (Op::HeadMatMul { x, w, n_head, k, m }, Shape::Act { rows, cols: mul(at, n_head, m)? })
            }
            op::CONCAT => {
                let (a, b) = (req(0)?, req(1)?);
                let (rows, ca) = self.act(a, "a", at)?;
                let (rb, cb) = self.act(b, "b", at)?;
                let n_head = ip(0)?;
                if rb != rows || n_head == 0 || ca % n_head != 0 || cb % n_head != 0 {
                    return Err(graph_err(
                        at,
                        format!("cannot concatenate [{rows:?}, {ca}] and [{rb:?}, {cb}] head by head ({n_head} heads)"),
                    ));
                }
                let cols = ca.checked_add(cb).ok_or_else(|| graph_err(at, format!("{ca} + {cb} overflows")))?;
                (Op::Concat { a, b, n_head }, Shape::Act { rows, cols })
            }
            code => return Err(graph_err(at, format!("unknown op code {code} (plugin newer than host?)"))),
        };
        self.nodes.push(Node { name, op, shape });
        Ok(self.nodes.len() - 1)
    }

    /// Final checks once the plugin returns.
    pub fn finish(&self) -> Result<(), RuntimeError> {
        let out = self.output.ok_or_else(|| graph_err("graph", "the plugin recorded no OUTPUT".into()))?;
        if let Some(missing) = self.layers.iter().position(|l| l.is_none()) {
            return Err(graph_err("graph", format!("attention layers are not numbered 0..n: layer {missing} is missing")));
        }
        let _ = out;
        Ok(())
    }
}

fn graph_err(node: &str, what: String) -> RuntimeError {
    RuntimeError::Graph { node: node.to_string(), what }
}

/// `a * b` of two plugin-given sizes (head counts from a hostile config can be near
/// `usize::MAX`): an overflow is an error, never a panic or a wrapped product that passes a check.
fn mul(node: &str, a: usize, b: usize) -> Result<usize, RuntimeError> {
    a.checked_mul(b).ok_or_else(|| graph_err(node, format!("{a} × {b} overflows")))
}
