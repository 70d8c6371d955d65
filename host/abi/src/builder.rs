//! Safe Rust layer over [`RfHostV1`] for plugins written in Rust: metadata queries and one method
//! per op. The parameter layout of each op (which `inputs`, `iparams`, `fparams` slot means what)
//! is defined here once; the host's executor decodes the same layout (see host/runtime).
//!
//! Encoder additions (appended for BERT, see plugins/bert): [`Builder::get_rows_of`] looks up
//! positions or a constant id instead of tokens (GET_ROWS `iparams[0]`, [`crate::rows_src`]);
//! [`Builder::pool`] reduces each sequence to one row; [`Builder::l2_norm`];
//! [`Builder::output_embedding`] marks the result as embeddings rather than logits.

use crate::{op, output_kind, rows_src, status, RfHostV1, RfNode, RfOp, RfOpExt, RfStr, NO_NODE};

/// Which ids an embedding lookup reads (see [`Builder::get_rows_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowIds {
    /// The batch's tokens.
    Tokens,
    /// Each token's position in its sequence.
    Positions,
    /// The same id for every token.
    Constant(u32),
}

/// A node of the graph being built (activation or weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node(pub RfNode);

/// An error while building: the host's message or a plugin-side description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError(pub String);

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for OpError {}

impl From<String> for OpError {
    fn from(s: String) -> Self {
        OpError(s)
    }
}

/// Metadata access helpers (keys use GGUF's vocabulary: `llama.block_count`).
pub trait Meta {
    fn meta_int_opt(&self, key: &str) -> Result<Option<i64>, OpError>;
    fn meta_float_opt(&self, key: &str) -> Result<Option<f64>, OpError>;
    fn meta_str_opt(&self, key: &str) -> Result<Option<String>, OpError>;
    fn meta_array_opt(&self, key: &str) -> Result<Option<Vec<f64>>, OpError>;

    fn meta_usize(&self, key: &str) -> Result<usize, OpError> {
        let v = self.meta_int_opt(key)?.ok_or_else(|| OpError(format!("missing metadata key '{key}'")))?;
        usize::try_from(v).map_err(|_| OpError(format!("metadata key '{key}' = {v} is not a valid count")))
    }
    fn meta_usize_or(&self, key: &str, default: usize) -> Result<usize, OpError> {
        match self.meta_int_opt(key)? {
            None => Ok(default),
            Some(v) => usize::try_from(v).map_err(|_| OpError(format!("metadata key '{key}' = {v} is not a valid count"))),
        }
    }
    fn meta_f32(&self, key: &str) -> Result<f32, OpError> {
        Ok(self.meta_float_opt(key)?.ok_or_else(|| OpError(format!("missing metadata key '{key}'")))? as f32)
    }
    fn meta_f32_or(&self, key: &str, default: f32) -> Result<f32, OpError> {
        Ok(self.meta_float_opt(key)?.map(|v| v as f32).unwrap_or(default))
    }
}

/// The graph builder a plugin receives.
pub struct Builder<'h> {
    host: &'h RfHostV1Base,
    /// The host table carries the appended callbacks (`op_ex`, `supports`, `last_error`).
    ext: Option<&'h RfHostV1>,
}

/// The first revision of [`RfHostV1`] (ending at `set_error`): what every v1 host provides. A
/// reference to the full struct is only formed when `struct_size` covers it.
#[repr(C)]
struct RfHostV1Base {
    abi_version: u32,
    struct_size: u32,
    ctx: *mut std::ffi::c_void,
    meta_int: unsafe extern "C" fn(ctx: *mut std::ffi::c_void, key: RfStr, out: *mut i64) -> i32,
    meta_float: unsafe extern "C" fn(ctx: *mut std::ffi::c_void, key: RfStr, out: *mut f64) -> i32,
    meta_str: unsafe extern "C" fn(ctx: *mut std::ffi::c_void, key: RfStr, out: *mut RfStr) -> i32,
    meta_array_f64: unsafe extern "C" fn(ctx: *mut std::ffi::c_void, key: RfStr, buf: *mut f64, cap: usize, len: *mut usize) -> i32,
    tensor_shape: unsafe extern "C" fn(ctx: *mut std::ffi::c_void, name: RfStr, dims: *mut i64, n_dims: *mut u32) -> i32,
    op: unsafe extern "C" fn(ctx: *mut std::ffi::c_void, op: *const RfOp, out: *mut RfNode) -> i32,
    set_error: unsafe extern "C" fn(ctx: *mut std::ffi::c_void, msg: RfStr),
}

// The base view must stay a prefix of the full table.
const _: () = assert!(std::mem::size_of::<RfHostV1Base>() == RfHostV1::base_size());
const _: () = assert!(std::mem::offset_of!(RfHostV1Base, set_error) == std::mem::offset_of!(RfHostV1, set_error));

impl<'h> Builder<'h> {
    /// Wrap the host table after checking its version.
    ///
    /// # Safety
    /// `host` must point to a valid [`RfHostV1`] that outlives the builder.
    pub unsafe fn from_raw(host: *const RfHostV1) -> Result<Builder<'h>, OpError> {
        if host.is_null() {
            return Err(OpError("host table is null".into()));
        }
        // SAFETY: non-null and valid per the caller's contract; every v1 table starts with the
        // two u32 fields, so reading them is in bounds whatever the table's revision.
        let (version, size) = unsafe { ((*host).abi_version, (*host).struct_size) };
        if version != crate::ABI_VERSION {
            return Err(OpError(format!("host ABI version {version} but plugin built for {}", crate::ABI_VERSION)));
        }
        if (size as usize) < RfHostV1::base_size() {
            return Err(OpError(format!("host table of {size} bytes is older than this plugin expects")));
        }
        // SAFETY: the size check shows the base revision lies inside the table; RfHostV1Base is
        // a layout prefix of RfHostV1 (asserted at compile time above).
        let base = unsafe { &*(host as *const RfHostV1Base) };
        // SAFETY: `has_extensions` shows the whole current struct lies inside the table.
        let ext = RfHostV1::has_extensions(size).then(|| unsafe { &*host });
        Ok(Builder { host: base, ext })
    }

    /// The host's message for the last failed callback, when the host can tell it.
    fn host_message(&self) -> Option<String> {
        let h = self.ext?;
        let mut s = RfStr::EMPTY;
        // SAFETY: host table valid (from_raw); `s` is a writable local.
        if unsafe { (h.last_error)(h.ctx, &mut s) } != status::OK {
            return None;
        }
        // SAFETY: the host's string is valid until the next callback; copied here.
        Some(String::from_utf8_lossy(unsafe { s.as_bytes() }).into_owned())
    }

    fn last_error_or(&self, what: &str, code: i32) -> OpError {
        match self.host_message() {
            Some(m) => OpError(format!("{what} failed: {m}")),
            None => OpError(format!("{what} failed with status {code}")),
        }
    }

    /// Ask the host whether it supports something before using it ([`crate::cap`]): an op code,
    /// a slot of an op, or a value of an enumerated integer parameter. A host that predates the
    /// query answers `false` for everything: an op or slot added after the first revision of v1
    /// is then unavailable, which is the safe answer.
    pub fn supports(&self, op: u32, what: u32, slot: u32, value: i64) -> bool {
        match self.ext {
            // SAFETY: host table valid and covers `supports` (from_raw).
            Some(h) => (unsafe { (h.supports)(h.ctx, op, what, slot, value) }) == status::OK,
            None => false,
        }
    }

    /// Record an op with every slot given, including extension slots (inputs 4..8, integer and
    /// float parameters 8..16). For ops not yet wrapped by a method of this builder; check
    /// [`Builder::supports`] first for anything added after the first revision of ABI v1.
    pub fn raw_op(
        &mut self,
        code: u32,
        name: &str,
        inputs: &[Option<Node>],
        iparams: &[i64],
        fparams: &[f32],
        tensor: &str,
    ) -> Result<Node, OpError> {
        self.op(code, name, inputs, iparams, fparams, tensor)
    }

    /// Shape of a tensor in GGUF order (ne0 first), or None when the model has no such tensor.
    pub fn tensor_shape(&self, name: &str) -> Result<Option<Vec<usize>>, OpError> {
        let mut dims = [0i64; 4];
        let mut n = 0u32;
        // SAFETY: the host table is valid (from_raw); dims has room for 4 entries as the ABI says.
        let rc = unsafe { (self.host.tensor_shape)(self.host.ctx, RfStr::new(name), dims.as_mut_ptr(), &mut n) };
        match rc {
            status::OK => Ok(Some(dims[..(n as usize).min(4)].iter().map(|&d| d.max(0) as usize).collect())),
            status::NOT_FOUND => Ok(None),
            c => Err(self.last_error_or(&format!("tensor_shape({name})"), c)),
        }
    }

    pub fn has_tensor(&self, name: &str) -> Result<bool, OpError> {
        Ok(self.tensor_shape(name)?.is_some())
    }

    fn op(
        &mut self,
        code: u32,
        name: &str,
        inputs: &[Option<Node>],
        iparams: &[i64],
        fparams: &[f32],
        tensor: &str,
    ) -> Result<Node, OpError> {
        if inputs.len() > 8 || iparams.len() > 16 || fparams.len() > 16 {
            return Err(OpError(format!(
                "op '{name}': {} inputs, {} integer and {} float parameters exceed the ABI's 8, 16 and 16",
                inputs.len(),
                iparams.len(),
                fparams.len()
            )));
        }
        let mut o =
            RfOp { code, inputs: [NO_NODE; 4], iparams: [0; 8], fparams: [0.0; 8], name: RfStr::new(name), tensor: RfStr::new(tensor) };
        let mut x = RfOpExt::new();
        let (base_in, ext_in) = inputs.split_at(inputs.len().min(4));
        for (slot, n) in o.inputs.iter_mut().zip(base_in).chain(x.inputs.iter_mut().zip(ext_in)) {
            *slot = n.map(|n| n.0).unwrap_or(NO_NODE);
        }
        let (base_ip, ext_ip) = iparams.split_at(iparams.len().min(8));
        o.iparams[..base_ip.len()].copy_from_slice(base_ip);
        x.iparams[..ext_ip.len()].copy_from_slice(ext_ip);
        let (base_fp, ext_fp) = fparams.split_at(fparams.len().min(8));
        o.fparams[..base_fp.len()].copy_from_slice(base_fp);
        x.fparams[..ext_fp.len()].copy_from_slice(ext_fp);
        // Only ops that use an extension slot need the extension callback, so every op of the
        // first revision still works on a host that predates it.
        let needs_ext = x != RfOpExt::new();
        let mut out: RfNode = NO_NODE;
        let rc = match (needs_ext, self.ext) {
            // SAFETY: host table valid; `o` and the strings it borrows live across the call.
            (false, _) => unsafe { (self.host.op)(self.host.ctx, &o, &mut out) },
            // SAFETY: as above, and the table covers op_ex (from_raw); `x` lives across the call.
            (true, Some(h)) => unsafe { (h.op_ex)(h.ctx, &o, &x, &mut out) },
            (true, None) => {
                return Err(OpError(format!("op '{name}' needs extension slots, which this host (ABI v1, first revision) does not have")))
            }
        };
        if rc == status::OK {
            Ok(Node(out))
        } else {
            // The host has recorded a detailed message (and fails the build with it); the
            // status tells the plugin to stop.
            Err(self.last_error_or(&format!("op '{name}'"), rc))
        }
    }

    /// A weight tensor by GGUF name. Missing tensors are an error naming the tensor.
    pub fn weight(&mut self, tensor: &str) -> Result<Node, OpError> {
        self.op(op::WEIGHT, tensor, &[], &[], &[], tensor)
    }
    /// A weight tensor if the model has it.
    pub fn weight_opt(&mut self, tensor: &str) -> Result<Option<Node>, OpError> {
        if self.has_tensor(tensor)? {
            self.weight(tensor).map(Some)
        } else {
            Ok(None)
        }
    }
    /// Embedding lookup of the batch's tokens: table `[n_embd, n_vocab]` -> `[n_tokens, n_embd]`.
    pub fn get_rows(&mut self, name: &str, table: Node) -> Result<Node, OpError> {
        self.get_rows_of(name, table, RowIds::Tokens)
    }
    /// Embedding lookup of the given ids for every token of the batch -> `[n_tokens, n_embd]`.
    pub fn get_rows_of(&mut self, name: &str, table: Node, ids: RowIds) -> Result<Node, OpError> {
        let p = match ids {
            RowIds::Tokens => [rows_src::TOKENS, 0],
            RowIds::Positions => [rows_src::POSITIONS, 0],
            RowIds::Constant(id) => [rows_src::CONSTANT, id as i64],
        };
        self.op(op::GET_ROWS, name, &[Some(table)], &p, &[], "")
    }
    /// One row per sequence of the batch from its token rows: `mode` is a [`crate::pool`] value
    /// (mean, CLS = first token, last token). `x` must have token rows.
    pub fn pool(&mut self, name: &str, x: Node, mode: i64) -> Result<Node, OpError> {
        self.op(op::POOL, name, &[Some(x)], &[mode], &[], "")
    }
    /// `x / max(‖x‖₂, eps)` per row.
    pub fn l2_norm(&mut self, name: &str, x: Node, eps: f32) -> Result<Node, OpError> {
        self.op(op::L2_NORM, name, &[Some(x)], &[], &[eps], "")
    }
    /// RMSNorm over each row (or over each `group` columns, for per-head q/k norms; 0 = whole row),
    /// then multiply by `w` if given.
    pub fn rms_norm(&mut self, name: &str, x: Node, w: Option<Node>, eps: f32, group: usize) -> Result<Node, OpError> {
        self.op(op::RMS_NORM, name, &[Some(x), w], &[group as i64], &[eps], "")
    }
    /// LayerNorm over each row, optional affine weight and bias.
    pub fn layer_norm(&mut self, name: &str, x: Node, w: Option<Node>, b: Option<Node>, eps: f32) -> Result<Node, OpError> {
        self.op(op::LAYER_NORM, name, &[Some(x), w, b], &[], &[eps], "")
    }
    /// `x [n, k] · Wᵀ` with W in GGUF layout `[k, n_out]` (a 1-D `[k]` is `[k, 1]`), plus optional
    /// bias `[n_out]` -> `[n, n_out]`.
    pub fn matmul(&mut self, name: &str, x: Node, w: Node, bias: Option<Node>) -> Result<Node, OpError> {
        self.op(op::MATMUL, name, &[Some(x), Some(w), bias], &[], &[], "")
    }
    /// Element-wise add; `b` is the same shape as `a`, a weight vector broadcast over rows, or an
    /// activation `[n, 1]` broadcast over columns (one value per row).
    pub fn add(&mut self, name: &str, a: Node, b: Node) -> Result<Node, OpError> {
        self.op(op::ADD, name, &[Some(a), Some(b)], &[], &[], "")
    }
    /// Element-wise multiply; `b` as for [`Builder::add`] (e.g. `[n, 1]` gates scaling each row).
    pub fn mul(&mut self, name: &str, a: Node, b: Node) -> Result<Node, OpError> {
        self.op(op::MUL, name, &[Some(a), Some(b)], &[], &[], "")
    }
    pub fn scale(&mut self, name: &str, x: Node, s: f32) -> Result<Node, OpError> {
        self.op(op::SCALE, name, &[Some(x)], &[], &[s], "")
    }
    /// Rotary embedding at the batch's positions, as ggml_rope_ext.
    pub fn rope(&mut self, name: &str, x: Node, freq_factors: Option<Node>, p: &RopeOpts) -> Result<Node, OpError> {
        self.op(
            op::ROPE,
            name,
            &[Some(x), freq_factors],
            &[
                p.n_head as i64,
                p.head_dim as i64,
                p.n_rot as i64,
                if p.neox { 2 } else { 0 },
                p.n_ctx_orig as i64,
                if p.yarn_exact { crate::rope_yarn::EXACT } else { crate::rope_yarn::TRUNCATED },
            ],
            &[p.freq_base, p.freq_scale, p.ext_factor, p.attn_factor, p.beta_fast, p.beta_slow],
            "",
        )
    }
    /// Attention of layer `layer` over the paged KV cache (the only KV-aware op): stores `k`, `v`
    /// for the batch's tokens, then attends `q` to every visible cached position.
    pub fn attention(&mut self, name: &str, q: Node, k: Node, v: Node, p: &AttnOpts) -> Result<Node, OpError> {
        self.attention_with_sinks(name, q, k, v, None, p)
    }
    /// [`Builder::attention`] with attention sinks (appended slot; ask `supports` first): `sinks`
    /// `[n_head]` holds one logit per query head that joins the softmax's denominator only
    /// (gpt-oss).
    pub fn attention_with_sinks(
        &mut self,
        name: &str,
        q: Node,
        k: Node,
        v: Node,
        sinks: Option<Node>,
        p: &AttnOpts,
    ) -> Result<Node, OpError> {
        self.op(
            op::ATTENTION,
            name,
            &[Some(q), Some(k), Some(v), sinks],
            &[
                p.layer as i64,
                p.n_head as i64,
                p.n_head_kv as i64,
                p.head_dim_k as i64,
                p.head_dim_v as i64,
                p.sliding_window as i64,
                p.causal as i64,
            ],
            &[p.scale, p.softcap],
            "",
        )
    }
    pub fn silu(&mut self, name: &str, x: Node) -> Result<Node, OpError> {
        self.op(op::SILU, name, &[Some(x)], &[], &[], "")
    }
    /// `1 / (1 + exp(-x))`.
    pub fn sigmoid(&mut self, name: &str, x: Node) -> Result<Node, OpError> {
        self.op(op::SIGMOID, name, &[Some(x)], &[], &[], "")
    }
    /// GELU, tanh approximation (ggml_gelu).
    pub fn gelu(&mut self, name: &str, x: Node) -> Result<Node, OpError> {
        self.op(op::GELU, name, &[Some(x)], &[], &[], "")
    }
    /// GELU, exact erf form.
    pub fn gelu_erf(&mut self, name: &str, x: Node) -> Result<Node, OpError> {
        self.op(op::GELU_ERF, name, &[Some(x)], &[], &[], "")
    }
    /// `silu(gate) * up`.
    pub fn swiglu(&mut self, name: &str, gate: Node, up: Node) -> Result<Node, OpError> {
        self.op(op::SWIGLU, name, &[Some(gate), Some(up)], &[], &[], "")
    }
    /// `gelu_tanh(gate) * up`.
    pub fn geglu(&mut self, name: &str, gate: Node, up: Node) -> Result<Node, OpError> {
        self.op(op::GEGLU, name, &[Some(gate), Some(up)], &[], &[], "")
    }
    /// `cap * tanh(x / cap)`.
    pub fn softcap(&mut self, name: &str, x: Node, cap: f32) -> Result<Node, OpError> {
        self.op(op::SOFTCAP, name, &[Some(x)], &[], &[cap], "")
    }
    /// Columns `[offset, offset + cols)` of every row (splitting a fused projection).
    pub fn view(&mut self, name: &str, x: Node, offset: usize, cols: usize) -> Result<Node, OpError> {
        self.op(op::VIEW, name, &[Some(x)], &[offset as i64, cols as i64], &[], "")
    }
    /// Keep only the rows whose outputs the host asked for (usually the last token of each
    /// sequence); later ops run on those rows only.
    pub fn output_rows(&mut self, name: &str, x: Node) -> Result<Node, OpError> {
        self.op(op::OUTPUT_ROWS, name, &[Some(x)], &[], &[], "")
    }
    /// Mixture of experts, routing: from router `logits [n, n_expert]` pick `n_expert_used` experts
    /// per row with `gating` ([`crate::moe_gating`]) -> `[n, 2·n_expert_used]` (weights, then ids).
    pub fn moe_route(&mut self, name: &str, logits: Node, n_expert_used: usize, gating: i64) -> Result<Node, OpError> {
        self.op(op::MOE_ROUTE, name, &[Some(logits)], &[n_expert_used as i64, gating], &[], "")
    }
    /// [`Builder::moe_route`] with the appended slots (ask `supports` first): a selection bias,
    /// group-limited choice and a weight scale ([`MoeRouteOpts`]; DeepSeek-V2/V3 routing).
    pub fn moe_route_ex(&mut self, name: &str, logits: Node, n_expert_used: usize, gating: i64, r: &MoeRouteOpts) -> Result<Node, OpError> {
        self.op(
            op::MOE_ROUTE,
            name,
            &[Some(logits), r.bias],
            &[n_expert_used as i64, gating, r.n_group as i64, r.n_group_used as i64, r.group_score],
            &[r.scale],
            "",
        )
    }
    /// Per-head matrix product (HEAD_MATMUL; ask `supports` first): `x [n, n_head·k]` and a weight
    /// `[k, m, n_head]` (head `h`: `m` rows of `k` values) -> `[n, n_head·m]`.
    pub fn head_matmul(&mut self, name: &str, x: Node, w: Node) -> Result<Node, OpError> {
        self.op(op::HEAD_MATMUL, name, &[Some(x), Some(w)], &[], &[], "")
    }
    /// Columns `[offset, offset + cols)` of every `head`-wide head of `x` (VIEW's appended head
    /// width; ask `supports` first) -> `[n, (row / head)·cols]`.
    pub fn view_heads(&mut self, name: &str, x: Node, head: usize, offset: usize, cols: usize) -> Result<Node, OpError> {
        self.op(op::VIEW, name, &[Some(x)], &[offset as i64, cols as i64, head as i64], &[], "")
    }
    /// Head by head `[a_h | b_h]` of `a [n, n_head·ka]` and `b [n, n_head·kb]` (CONCAT; ask
    /// `supports` first) -> `[n, n_head·(ka + kb)]`; `n_head` 1 concatenates whole rows.
    pub fn concat_heads(&mut self, name: &str, a: Node, b: Node, n_head: usize) -> Result<Node, OpError> {
        self.op(op::CONCAT, name, &[Some(a), Some(b)], &[n_head as i64], &[], "")
    }
    /// Attention whose V is the first `p.head_dim_v` columns of K (LATENT_ATTENTION; ask
    /// `supports` first): `kv [n, n_head_kv·head_dim_k]` is cached once per token and KV head,
    /// as MLA's latent (V) and rope key. Parameters as [`Builder::attention`].
    pub fn latent_attention(&mut self, name: &str, q: Node, kv: Node, p: &AttnOpts) -> Result<Node, OpError> {
        self.op(
            op::LATENT_ATTENTION,
            name,
            &[Some(q), Some(kv)],
            &[
                p.layer as i64,
                p.n_head as i64,
                p.n_head_kv as i64,
                p.head_dim_k as i64,
                p.head_dim_v as i64,
                p.sliding_window as i64,
                p.causal as i64,
            ],
            &[p.scale, p.softcap],
            "",
        )
    }
    /// Mixture of experts, gate/up: for each row and each expert `e` that `route` selected,
    /// `act(x·gate_e) * (x·up_e)` with stacked weights `[n_embd, n_ff, n_expert]`
    /// -> `[n, n_expert_used·n_ff]` (one `n_ff` slice per routing slot). `act`: [`crate::moe_act`].
    #[allow(clippy::too_many_arguments)]
    pub fn moe_gate_up(
        &mut self,
        name: &str,
        x: Node,
        route: Node,
        gate_exps: Node,
        up_exps: Node,
        n_expert_used: usize,
        act: i64,
    ) -> Result<Node, OpError> {
        self.op(op::MOE_GATE_UP, name, &[Some(x), Some(route), Some(gate_exps), Some(up_exps)], &[n_expert_used as i64, act], &[], "")
    }
    /// [`Builder::moe_gate_up`] with the appended slots (ask `supports` first): per-expert biases
    /// of the gate and up projections (`[n_ff, n_expert]`, extension inputs 4 and 5) added before
    /// the activation, and the activation's parameters (`act_params`: alpha and limit of
    /// [`crate::moe_act::SWIGLU_OAI`]; zeros for the others).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_gate_up_ex(
        &mut self,
        name: &str,
        x: Node,
        route: Node,
        experts: &MoeExperts,
        n_expert_used: usize,
        act: i64,
        act_params: [f32; 2],
    ) -> Result<Node, OpError> {
        self.op(
            op::MOE_GATE_UP,
            name,
            &[Some(x), Some(route), Some(experts.gate), Some(experts.up), experts.gate_bias, experts.up_bias],
            &[n_expert_used as i64, act],
            &act_params,
            "",
        )
    }
    /// Mixture of experts, down: `Σ_slots weight · (h_slot · down_e)` with stacked
    /// `down_exps [n_ff, n_embd, n_expert]` -> `[n, n_embd]`.
    pub fn moe_down(&mut self, name: &str, h: Node, route: Node, down_exps: Node, n_expert_used: usize) -> Result<Node, OpError> {
        self.moe_down_biased(name, h, route, down_exps, None, n_expert_used)
    }
    /// [`Builder::moe_down`] with a per-expert bias `[n_embd, n_expert]` added to each selected
    /// expert's output before weighting (appended slot; ask `supports` first).
    pub fn moe_down_biased(
        &mut self,
        name: &str,
        h: Node,
        route: Node,
        down_exps: Node,
        bias: Option<Node>,
        n_expert_used: usize,
    ) -> Result<Node, OpError> {
        self.op(op::MOE_DOWN, name, &[Some(h), Some(route), Some(down_exps), bias], &[n_expert_used as i64], &[], "")
    }
    /// Mark the graph's result (logits).
    pub fn output(&mut self, name: &str, x: Node) -> Result<Node, OpError> {
        self.op(op::OUTPUT, name, &[Some(x)], &[output_kind::LOGITS], &[], "")
    }
    /// Mark the graph's result as embeddings (pooled rows, or token rows without pooling).
    pub fn output_embedding(&mut self, name: &str, x: Node) -> Result<Node, OpError> {
        self.op(op::OUTPUT, name, &[Some(x)], &[output_kind::EMBEDDING], &[], "")
    }
}

impl Meta for Builder<'_> {
    fn meta_int_opt(&self, key: &str) -> Result<Option<i64>, OpError> {
        let mut v = 0i64;
        // SAFETY: host table valid; out pointer to a local.
        match unsafe { (self.host.meta_int)(self.host.ctx, RfStr::new(key), &mut v) } {
            status::OK => Ok(Some(v)),
            status::NOT_FOUND => Ok(None),
            status::WRONG_TYPE => Err(OpError(format!("metadata key '{key}' is not an integer"))),
            c => Err(self.last_error_or(&format!("meta_int({key})"), c)),
        }
    }
    fn meta_float_opt(&self, key: &str) -> Result<Option<f64>, OpError> {
        let mut v = 0f64;
        // SAFETY: host table valid; out pointer to a local.
        match unsafe { (self.host.meta_float)(self.host.ctx, RfStr::new(key), &mut v) } {
            status::OK => Ok(Some(v)),
            status::NOT_FOUND => Ok(None),
            status::WRONG_TYPE => Err(OpError(format!("metadata key '{key}' is not a number"))),
            c => Err(self.last_error_or(&format!("meta_float({key})"), c)),
        }
    }
    fn meta_str_opt(&self, key: &str) -> Result<Option<String>, OpError> {
        let mut v = RfStr::EMPTY;
        // SAFETY: host table valid; the returned string is valid during the build call and copied here.
        match unsafe { (self.host.meta_str)(self.host.ctx, RfStr::new(key), &mut v) } {
            // SAFETY: the host returns a valid (ptr, len) for the duration of the call.
            status::OK => Ok(Some(String::from_utf8_lossy(unsafe { v.as_bytes() }).into_owned())),
            status::NOT_FOUND => Ok(None),
            status::WRONG_TYPE => Err(OpError(format!("metadata key '{key}' is not a string"))),
            c => Err(self.last_error_or(&format!("meta_str({key})"), c)),
        }
    }
    fn meta_array_opt(&self, key: &str) -> Result<Option<Vec<f64>>, OpError> {
        let mut buf = vec![0f64; 64];
        loop {
            let mut len = 0usize;
            // SAFETY: host table valid; buf has buf.len() writable slots.
            let rc = unsafe { (self.host.meta_array_f64)(self.host.ctx, RfStr::new(key), buf.as_mut_ptr(), buf.len(), &mut len) };
            match rc {
                status::OK => {
                    buf.truncate(len);
                    return Ok(Some(buf));
                }
                status::TOO_SMALL if len > buf.len() => buf.resize(len, 0.0),
                status::NOT_FOUND => return Ok(None),
                status::WRONG_TYPE => return Err(OpError(format!("metadata key '{key}' is not a numeric array"))),
                c => return Err(self.last_error_or(&format!("meta_array({key})"), c)),
            }
        }
    }
}

/// Rotary-embedding parameters (ggml_rope_ext's).
#[derive(Clone, Debug)]
pub struct RopeOpts {
    pub n_head: usize,
    pub head_dim: usize,
    /// Rotated dimensions (≤ head_dim; partial rotary when smaller).
    pub n_rot: usize,
    /// NeoX style (rotate halves) instead of interleaved pairs.
    pub neox: bool,
    pub freq_base: f32,
    /// 1 / linear scaling factor.
    pub freq_scale: f32,
    pub n_ctx_orig: usize,
    /// YaRN parameters (ext_factor 0 disables YaRN).
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// YaRN's correction range unrounded (transformers' `truncate = False`, gpt-oss) instead of
    /// ggml's whole dims (appended ROPE slot: ask `supports` before setting it).
    pub yarn_exact: bool,
}

/// The stacked expert weights of one MoE layer for [`Builder::moe_gate_up_ex`]: gate and up
/// `[n_embd, n_ff, n_expert]`, and their optional biases `[n_ff, n_expert]`.
#[derive(Clone, Copy, Debug)]
pub struct MoeExperts {
    pub gate: Node,
    pub up: Node,
    pub gate_bias: Option<Node>,
    pub up_bias: Option<Node>,
}

impl RopeOpts {
    /// Plain RoPE without scaling.
    pub fn new(n_head: usize, head_dim: usize, n_rot: usize, neox: bool, freq_base: f32) -> Self {
        RopeOpts {
            n_head,
            head_dim,
            n_rot,
            neox,
            freq_base,
            freq_scale: 1.0,
            n_ctx_orig: 0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            yarn_exact: false,
        }
    }

    /// Apply the scaling declared in GGUF metadata (`{arch}.rope.scaling.*`), as llama.cpp does:
    /// `linear` divides positions by the factor; `yarn` enables YaRN with the original context
    /// (and an unrounded correction range when `rope.scaling.yarn_truncate` is false).
    pub fn with_scaling_from(mut self, m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let kind = m.meta_str_opt(&format!("{arch}.rope.scaling.type"))?.unwrap_or_else(|| "none".into());
        let factor = m.meta_float_opt(&format!("{arch}.rope.scaling.factor"))?.unwrap_or(0.0) as f32;
        let n_ctx_train = m.meta_usize_or(&format!("{arch}.context_length"), 0)?;
        self.n_ctx_orig = m.meta_usize_or(&format!("{arch}.rope.scaling.original_context_length"), n_ctx_train)?;
        match kind.as_str() {
            "none" | "" | "default" => {}
            "linear" => {
                if factor > 0.0 {
                    self.freq_scale = 1.0 / factor;
                }
            }
            "yarn" => {
                if factor > 0.0 {
                    self.freq_scale = 1.0 / factor;
                }
                self.ext_factor = m.meta_f32_or(&format!("{arch}.rope.scaling.yarn_ext_factor"), -1.0)?;
                if self.ext_factor < 0.0 {
                    self.ext_factor = 1.0;
                }
                self.attn_factor = m.meta_f32_or(&format!("{arch}.rope.scaling.attn_factor"), 1.0)?;
                self.beta_fast = m.meta_f32_or(&format!("{arch}.rope.scaling.yarn_beta_fast"), 32.0)?;
                self.beta_slow = m.meta_f32_or(&format!("{arch}.rope.scaling.yarn_beta_slow"), 1.0)?;
                // Ours (llama.cpp always truncates): transformers' `truncate`, when a config says.
                self.yarn_exact = m.meta_int_opt(&format!("{arch}.rope.scaling.yarn_truncate"))? == Some(0);
            }
            other => return Err(OpError(format!("unsupported rope scaling type '{other}' (supported: none, linear, yarn)"))),
        }
        Ok(self)
    }
}

/// The appended MOE_ROUTE parameters of [`Builder::moe_route_ex`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MoeRouteOpts {
    /// A weight `[n_expert]` added to the scores for the choice only (DeepSeek-V3's
    /// `e_score_correction_bias`, GGUF `exp_probs_b.bias`).
    pub bias: Option<Node>,
    /// Group-limited choice: experts in `n_group` equal groups, the best `n_group_used` kept
    /// (`n_group` 0 or 1: no groups); a group's score is a [`crate::moe_group`] value.
    pub n_group: usize,
    pub n_group_used: usize,
    pub group_score: i64,
    /// Multiplies the k weights (0 = 1; `routed_scaling_factor`).
    pub scale: f32,
}

/// Attention parameters.
#[derive(Clone, Debug)]
pub struct AttnOpts {
    pub layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    /// 0 = attend to all earlier positions; else only the last `sliding_window` positions.
    pub sliding_window: usize,
    pub causal: bool,
    /// 0 = 1/sqrt(head_dim_k).
    pub scale: f32,
    /// 0 = no logit softcap.
    pub softcap: f32,
}
