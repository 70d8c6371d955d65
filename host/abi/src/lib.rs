//! The plugin C ABI (version 1) and a safe Rust layer over it.
//!
//! A plugin is a shared library exporting one symbol, [`PLUGIN_SYMBOL`] (`rocmforge_plugin_v1`),
//! a function returning a pointer to a static [`RfPluginV1`]. The host checks `abi_version` and
//! `struct_size` before reading anything else, then asks the plugin to build the forward graph of a
//! model through the host's [`RfHostV1`] table: the plugin queries metadata and tensor shapes and
//! records ops; it never touches GPUs, the KV cache or weights (DESIGN.md §2.1).
//!
//! ```text
//!   host                                   plugin (.so)
//!   dlopen + dlsym("rocmforge_plugin_v1") ─▶ &'static RfPluginV1 {abi_version, struct_size, archs, tensor map, build}
//!   build(&RfHostV1, arch) ───────────────▶ meta_*() / tensor_shape() / op(RfOp) ... ◀── calls back
//!                          ◀─────────────── status (0 = ok; else message given through host.set_error)
//! ```
//!
//! Invariants:
//! - Tables are append-only: a field is never removed or reordered; a reader only reads fields
//!   that lie inside `struct_size`. `abi_version` changes only for incompatible changes.
//! - Strings and slices cross as `(ptr, len)`; whoever allocates frees. Everything the plugin
//!   returns is `'static`; everything the host passes is valid for the duration of the call.
//! - Every plugin entry point catches panics ([`guard`]) and turns them into a status + message:
//!   unwinding across `extern "C"` would abort the host.
//! - Op codes, transform codes and status codes below are part of the ABI and never renumbered.
//! - Unused op slots are `NO_NODE` / 0 and the host checks it: an op setting a slot the host does
//!   not read for that op is refused with a message naming the op and the slot. Ops grow through
//!   the size-prefixed [`RfOpExt`] record; [`RfHostV1::supports`] tells what a host knows.
//! - Threading: the host may run `build` of one plugin on several threads at once (one per model
//!   being loaded), each with its own [`RfHostV1`] and `ctx`. Callbacks must be made on the thread
//!   that called `build`, before it returns (the host refuses others with INVALID_ARGUMENT). A
//!   plugin keeps no mutable global state without its own locking.
//!
//! Modelled on the Arrow C data interface and DataFusion's FFI structs (plain repr(C) vtables with
//! a version handshake); see `include/rocmforge_plugin.h` for the same ABI in C.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod blocks;
pub mod builder;
pub use blocks::{Heads, SelfAttention, SwaPattern};
pub use builder::{Builder, Meta, MoeExperts, MoeRouteOpts, Node, OpError, RowIds};

use std::ffi::c_void;

/// The exported symbol every plugin defines.
pub const PLUGIN_SYMBOL: &[u8] = b"rocmforge_plugin_v1";
/// The ABI version of this crate; the host refuses a plugin reporting another one.
pub const ABI_VERSION: u32 = 1;

/// Status codes returned by entry points and host callbacks.
pub mod status {
    pub const OK: i32 = 0;
    /// Generic failure; the message was passed through `set_error`.
    pub const ERROR: i32 = 1;
    /// A metadata key or tensor does not exist.
    pub const NOT_FOUND: i32 = 2;
    /// A metadata key exists with another type.
    pub const WRONG_TYPE: i32 = 3;
    /// The plugin panicked; the message was passed through `set_error`.
    pub const PANIC: i32 = 4;
    /// A buffer given by the caller was too small; the needed length was written.
    pub const TOO_SMALL: i32 = 5;
    /// A callback was called with a bad argument (a null or misaligned pointer, a string with a
    /// null pointer or an absurd length, invalid UTF-8, a callback from another thread). The host
    /// recorded why (`last_error`) and fails the build: it is a bug in the plugin.
    pub const INVALID_ARGUMENT: i32 = 6;
}

/// A borrowed UTF-8 string or byte slice: `(ptr, len)`, never NUL-terminated by contract.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RfStr {
    pub ptr: *const u8,
    pub len: usize,
}

// SAFETY: RfStr is a plain pointer + length to immutable data; the ABI requires the pointee to be
// either 'static (plugin tables) or valid and unaliased-mutably for the call (host arguments).
unsafe impl Send for RfStr {}
// SAFETY: see above; the data is never written through an RfStr.
unsafe impl Sync for RfStr {}

impl RfStr {
    pub const EMPTY: RfStr = RfStr { ptr: std::ptr::null(), len: 0 };

    /// Borrow a Rust string. The RfStr must not outlive `s`.
    pub const fn new(s: &str) -> RfStr {
        RfStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// View as bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid for `'a` (or be null with len 0).
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: guaranteed by the caller per the function contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// View as a string, replacing nothing: invalid UTF-8 gives `None`.
    ///
    /// # Safety
    /// As [`RfStr::as_bytes`].
    pub unsafe fn as_str<'a>(self) -> Option<&'a str> {
        // SAFETY: forwarded contract.
        std::str::from_utf8(unsafe { self.as_bytes() }).ok()
    }
}

/// Load-time weight transforms a tensor-map entry may declare (applied by the host when it loads
/// Hugging Face tensors; GGUF files are already in GGUF layout).
pub mod transform {
    /// Use the tensor as stored.
    pub const NONE: u32 = 0;
    /// Permute the rows of a Q projection from HF's rotate-half layout to GGUF's interleaved
    /// layout (what llama.cpp's converter does), using `{arch}.attention.head_count`.
    pub const PERMUTE_Q: u32 = 1;
    /// As PERMUTE_Q for K, with `{arch}.attention.head_count_kv`.
    pub const PERMUTE_K: u32 = 2;
    /// Store `1 + w` (Gemma's RMSNorm weights).
    pub const ADD_ONE: u32 = 3;
    /// The gate half of a fused gate/up projection whose halves interleave along the output dim
    /// (transformers' gpt-oss `gate_up_proj[..., ::2]`): the even entries of the last HF dim. A
    /// 3-D `x @ W` weight stored input-major, `[n_expert, in, 2·n_ff]` (transformers' fused
    /// experts), also becomes GGUF's output-major layout: HF `[n_expert, n_ff, in]`, GGUF dims
    /// `[in, n_ff, n_expert]`. A bias `[n_expert, 2·n_ff]` becomes `[n_expert, n_ff]`.
    pub const INTERLEAVED_GATE: u32 = 4;
    /// As [`INTERLEAVED_GATE`] for the up half: the odd entries (`gate_up_proj[..., 1::2]`).
    pub const INTERLEAVED_UP: u32 = 5;
    /// An `x @ W` weight stored input-major (`[.., in, out]`, transformers' fused experts'
    /// `down_proj`): its last two HF dims swapped, so GGUF dims are `[in, out, ..]`.
    pub const TRANSPOSE: u32 = 6;
    /// DeepSeek-V2's `kv_b_proj` (GGUF `attn_kv_b`, `[kv_lora_rank, n_head·(dn + dv)]`) split per
    /// head into its key half, transposed: GGUF `attn_k_b` `[dn, kv_lora_rank, n_head]`, as
    /// llama.cpp's converter writes it. `dn` = `attention.key_length_mla` (else `key_length`)
    /// minus `rope.dimension_count`, `dv` = `attention.value_length_mla` (else `value_length`).
    /// Used by derived tensor-map rows (HF name `gguf:<source>`, see [`RfTensorMap`]).
    pub const KV_B_TO_K_B: u32 = 7;
    /// As [`KV_B_TO_K_B`] for the value half, not transposed: GGUF `attn_v_b`
    /// `[kv_lora_rank, dv, n_head]`.
    pub const KV_B_TO_V_B: u32 = 8;
}

/// Tensor-map entry flags.
pub mod tensor_flags {
    /// The tensor may be absent (e.g. `output.weight` with tied embeddings, biases).
    pub const OPTIONAL: u32 = 1;
}

/// One row of a plugin's tensor table: a GGUF tensor name (the internal vocabulary) and the Hugging
/// Face name it comes from. `{il}` in either pattern stands for the layer index. `{xid}` in the HF
/// pattern only stands for an expert index: the host stacks experts 0, 1, ... (as many as exist)
/// into one tensor with one more GGUF dimension (`ffn_gate_exps`: `[n_embd, n_ff, n_expert]`).
/// An HF pattern `config:<dotted.path>` names a numeric array in `config.json` that becomes a 1-D
/// f32 tensor (Phi-3's LongRoPE `rope_parameters.long_factor` -> `rope_factors_long.weight`).
/// An HF pattern `gguf:<GGUF name>` derives the tensor at load from that other GGUF-named tensor
/// of the same model (GGUF file or HF directory) by the row's transform, when the model lacks it
/// (DeepSeek-V2's `attn_k_b` / `attn_v_b` from a fused `attn_kv_b`: [`transform::KV_B_TO_K_B`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RfTensorMap {
    pub gguf: RfStr,
    pub hf: RfStr,
    pub flags: u32,
    pub transform: u32,
}

/// One row of a plugin's config map: a GGUF metadata key (with `{arch}` standing for the GGUF
/// architecture name) and the `config.json` key it comes from (dotted path for nested objects).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RfConfigMap {
    pub gguf: RfStr,
    pub hf: RfStr,
}

/// A plugin's architecture claim: GGUF `general.architecture` names and HF `architectures` names.
/// For an HF claim, `gguf_arch` says which GGUF architecture name the converted metadata uses.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RfArchClaim {
    pub gguf_arch: RfStr,
    pub hf_arch: RfStr,
}

/// The table a plugin exports (version 1). Append-only.
#[repr(C)]
pub struct RfPluginV1 {
    pub abi_version: u32,
    pub struct_size: u32,
    /// Plugin name, e.g. "llama".
    pub name: RfStr,
    /// Plugin version string.
    pub version: RfStr,
    /// Architectures served (GGUF name, HF name; either may be empty).
    pub archs: *const RfArchClaim,
    pub n_archs: usize,
    pub tensors: *const RfTensorMap,
    pub n_tensors: usize,
    pub config: *const RfConfigMap,
    pub n_config: usize,
    /// Build the forward graph for `arch` (a GGUF architecture name) through `host`.
    pub build: unsafe extern "C" fn(host: *const RfHostV1, arch: RfStr) -> i32,
    /// Appended: conditional GGUF claims (see [`RfMetaClaim`]). A host reads these two fields only
    /// when `struct_size` covers them; older plugins have none.
    pub meta_claims: *const RfMetaClaim,
    pub n_meta_claims: usize,
}

/// A conditional claim on GGUF files, decided by data in the file: the plugin serves files whose
/// `general.architecture` is `gguf_arch` AND whose metadata key `key` (`{arch}` = `gguf_arch`) is
/// present with a non-zero number, `true`, a non-empty string or a non-empty array. A matching
/// conditional claim takes precedence over every plain [`RfArchClaim`] for the same architecture.
/// Example: Mixtral GGUF files say `general.architecture = llama`; the plugin that serves them
/// claims `("llama", "{arch}.expert_count")`, and ordinary llama files stay with the llama plugin.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RfMetaClaim {
    pub gguf_arch: RfStr,
    pub key: RfStr,
}

// SAFETY: the table only holds pointers to 'static immutable data and a function pointer.
unsafe impl Sync for RfPluginV1 {}

/// Node handle in the graph being built.
pub type RfNode = u32;

/// Op codes (ABI: append only). Inputs and parameters per op are documented on [`builder::Builder`].
pub mod op {
    pub const WEIGHT: u32 = 1;
    pub const GET_ROWS: u32 = 2;
    pub const RMS_NORM: u32 = 3;
    pub const LAYER_NORM: u32 = 4;
    pub const MATMUL: u32 = 5;
    pub const ADD: u32 = 6;
    pub const MUL: u32 = 7;
    pub const SCALE: u32 = 8;
    pub const ROPE: u32 = 9;
    pub const ATTENTION: u32 = 10;
    pub const SILU: u32 = 11;
    pub const GELU: u32 = 12;
    pub const GELU_ERF: u32 = 13;
    pub const SWIGLU: u32 = 14;
    pub const GEGLU: u32 = 15;
    pub const SOFTCAP: u32 = 16;
    pub const VIEW: u32 = 17;
    pub const OUTPUT_ROWS: u32 = 18;
    pub const OUTPUT: u32 = 19;
    /// Reduce each sequence's token rows to one row ([`pool`] mode); rows after it are sequences.
    pub const POOL: u32 = 20;
    /// Divide each row by its L2 norm (sentence embeddings).
    pub const L2_NORM: u32 = 21;
    /// Mixture of experts, step 1: top-k expert selection from router logits ([`moe_gating`]).
    pub const MOE_ROUTE: u32 = 22;
    /// Mixture of experts, step 2: `act(x·gate_e) * (x·up_e)` for each selected expert `e`.
    pub const MOE_GATE_UP: u32 = 23;
    /// Mixture of experts, step 3: `Σ_slots weight · (h_slot · down_e)`.
    pub const MOE_DOWN: u32 = 24;
    /// `1 / (1 + exp(-x))` (Qwen2-MoE's shared-expert gate).
    pub const SIGMOID: u32 = 25;
    /// Per-head matrix product: `x [n, n_head·k]`, weight `[k, m, n_head]` (head `h`: `m` rows of
    /// `k` values) -> `[n, n_head·m]` (MLA's absorbed `attn_k_b` / `attn_v_b`).
    pub const HEAD_MATMUL: u32 = 26;
    /// Per-head concatenation: `a [n, n_head·ka]`, `b [n, n_head·kb]` -> `[n, n_head·(ka+kb)]`,
    /// head `h` = `[a_h | b_h]`; `iparams[0]` = n_head (1: plain column concatenation).
    pub const CONCAT: u32 = 27;
    /// Attention whose V is the first `head_dim_v` columns of K (inputs `q`, `kv`; parameters as
    /// ATTENTION's): the cache holds one row per token and KV head, MLA's latent stored once.
    pub const LATENT_ATTENTION: u32 = 28;
}

// Slots appended to ops of the first revision of ABI v1 (ask `RfHostV1::supports` before using
// one; an older host refuses them by name; the header's slot table lists them too):
// - ATTENTION input 3: `sinks` `[n_head]`, one learned logit per query head that joins each
//   softmax's denominator only (gpt-oss; llama.cpp's `ggml_soft_max_add_sinks`).
// - ROPE `iparams[5]`: the YaRN correction range, a `rope_yarn` value.
// - MOE_GATE_UP extension inputs 4 and 5: per-expert gate and up biases `[n_ff, n_expert]`;
//   `fparams[0]`, `fparams[1]`: the `moe_act::SWIGLU_OAI` activation's alpha and limit.
// - MOE_DOWN input 3: per-expert down bias `[n_embd, n_expert]`.
// - VIEW `iparams[2]`: a head width `w` (0 = the whole row): columns `[offset, offset + cols)`
//   of every `w`-wide head, `[n, (row / w)·cols]` (MLA splits each q head into nope | rope).
// - MOE_ROUTE input 1: a selection bias `[n_expert]` added to the scores for the choice only
//   (DeepSeek-V3's `e_score_correction_bias`); `iparams[2]` = expert groups, `iparams[3]` =
//   groups kept, `iparams[4]` = a `moe_group` score (group-limited routing); `fparams[0]` =
//   a scale of the k weights (0 = 1; `routed_scaling_factor`); gating values SIGMOID(_NORM).

/// ROPE `iparams[5]`: how YaRN's correction range (the dims where the ramp between interpolated
/// and extrapolated frequencies runs) is computed. ABI: append only.
pub mod rope_yarn {
    /// Rounded outward to whole dims: ggml's `ggml_rope_yarn_corr_dims`, transformers'
    /// `truncate = True` (the default).
    pub const TRUNCATED: i64 = 0;
    /// Not rounded: transformers' `truncate = False` (gpt-oss).
    pub const EXACT: i64 = 1;
}

/// MOE_ROUTE gating (its `iparams[1]`): how router logits become expert weights. ABI: append only.
pub mod moe_gating {
    /// Softmax over all experts, keep the top-k probabilities as they are (Qwen2-MoE,
    /// Qwen3-MoE with `norm_topk_prob = false`).
    pub const SOFTMAX: i64 = 0;
    /// Softmax over all experts, top-k, then divide by the sum of the k kept probabilities, which
    /// equals a softmax over the top-k logits (Mixtral; Qwen3-MoE with `norm_topk_prob = true`).
    pub const SOFTMAX_NORM: i64 = 1;
    /// Sigmoid of each logit, top-k kept as they are (DeepSeek-V3 with `norm_topk_prob = false`).
    pub const SIGMOID: i64 = 2;
    /// Sigmoid, top-k, then divided by the sum of the k kept values (DeepSeek-V3).
    pub const SIGMOID_NORM: i64 = 3;
}

/// MOE_ROUTE `iparams[4]`: how a group's score is formed for group-limited routing
/// (`iparams[2]` groups, the best `iparams[3]` kept). ABI: append only.
pub mod moe_group {
    /// The largest selection score in the group (DeepSeek-V2 `group_limited_greedy`).
    pub const MAX: i64 = 0;
    /// The sum of the two largest selection scores (DeepSeek-V3 `noaux_tc`; llama.cpp).
    pub const TOP2_SUM: i64 = 1;
}

/// MOE_GATE_UP activation (its `iparams[1]`). ABI: append only.
pub mod moe_act {
    /// `silu(gate) * up`.
    pub const SWIGLU: i64 = 0;
    /// `gelu_tanh(gate) * up`.
    pub const GEGLU: i64 = 1;
    /// gpt-oss's clamped SwiGLU: `g = min(gate, limit)`, `u = clamp(up, -limit, limit)`,
    /// `(u + 1) · g · sigmoid(alpha · g)`, with alpha = `fparams[0]` (1.702) and limit =
    /// `fparams[1]` (7.0) of MOE_GATE_UP (llama.cpp's `ggml_swiglu_oai`).
    pub const SWIGLU_OAI: i64 = 2;
}

/// Which ids GET_ROWS looks up (its `iparams[0]`; 0 keeps the original meaning). ABI: append only.
pub mod rows_src {
    /// The batch's token ids (word embeddings).
    pub const TOKENS: i64 = 0;
    /// Each token's position in its sequence (absolute position embeddings).
    pub const POSITIONS: i64 = 1;
    /// One constant id, `iparams[1]`, for every token (BERT's token type 0).
    pub const CONSTANT: i64 = 2;
}

/// POOL modes (its `iparams[0]`): the values of llama.cpp's `llama_pooling_type`, so a GGUF
/// `{arch}.pooling_type` can be passed through. ABI: append only.
pub mod pool {
    /// Mean of the sequence's token rows.
    pub const MEAN: i64 = 1;
    /// The first token's row ([CLS]).
    pub const CLS: i64 = 2;
    /// The last token's row.
    pub const LAST: i64 = 3;
}

/// OUTPUT kinds (its `iparams[0]`).
pub mod output_kind {
    /// Logits over the vocabulary.
    pub const LOGITS: i64 = 0;
    /// Embeddings (pooled rows, or token rows when the model pools nothing).
    pub const EMBEDDING: i64 = 1;
}

/// One recorded op. Unused inputs are `u32::MAX`; unused params are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RfOp {
    pub code: u32,
    pub inputs: [RfNode; 4],
    pub iparams: [i64; 8],
    pub fparams: [f32; 8],
    /// Node name for dumps and diffs (e.g. "blk.3.attn_q").
    pub name: RfStr,
    /// Tensor name for WEIGHT.
    pub tensor: RfStr,
}

/// Sentinel for an unused input.
pub const NO_NODE: RfNode = u32::MAX;

/// The extension record of an op: slots beyond [`RfOp`]'s fixed four inputs, eight integer and
/// eight float parameters, passed with [`RfHostV1::op_ex`]. Size-prefixed and append-only:
/// `struct_size` says how many bytes the plugin filled (`size_of::<RfOpExt>()` of the header it
/// was built with). A host reads the fields it knows and refuses the op when a byte past them is
/// non-zero, so a plugin using a slot a host does not know fails loudly on that host.
///
/// Slot numbering continues the base record's: `inputs[i]` here is input `4 + i`, `iparams[i]`
/// integer parameter `8 + i`, `fparams[i]` float parameter `8 + i`. Unused inputs are
/// [`NO_NODE`], unused parameters 0, exactly as in [`RfOp`]. MOE_GATE_UP's expert biases are
/// the first slots defined here (inputs 4 and 5); new ops and parameters that need more are
/// added append-only (see docs/plugins.md, "Growing the ABI").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RfOpExt {
    /// Bytes the writer filled, this field included.
    pub struct_size: u32,
    /// Reserved; must be 0.
    pub flags: u32,
    /// Inputs 4..8.
    pub inputs: [RfNode; 4],
    /// Integer parameters 8..16.
    pub iparams: [i64; 8],
    /// Float parameters 8..16.
    pub fparams: [f32; 8],
}

impl RfOpExt {
    /// A record with every slot unused, sized for this header.
    pub const fn new() -> RfOpExt {
        RfOpExt { struct_size: std::mem::size_of::<RfOpExt>() as u32, flags: 0, inputs: [NO_NODE; 4], iparams: [0; 8], fparams: [0.0; 8] }
    }
}

impl Default for RfOpExt {
    fn default() -> Self {
        Self::new()
    }
}

/// What a capability query ([`RfHostV1::supports`]) asks about. ABI: append only.
pub mod cap {
    /// Does the host know op code `op` at all? (`slot`, `value` ignored.)
    pub const OP: u32 = 0;
    /// Does op `op` read input `slot` (0..8; 4..8 are extension slots)?
    pub const INPUT: u32 = 1;
    /// Does op `op` read integer parameter `slot` (0..16)?
    pub const IPARAM: u32 = 2;
    /// Does op `op` read float parameter `slot` (0..16)?
    pub const FPARAM: u32 = 3;
    /// Does op `op` accept `value` in its enumerated integer parameter `slot` (a RoPE mode, a
    /// MoE gating, a pool mode)? A slot that is not enumerated answers for any value it reads.
    pub const IPARAM_VALUE: u32 = 4;
}

/// The host table a plugin builds its graph through (version 1). Append-only.
#[repr(C)]
pub struct RfHostV1 {
    pub abi_version: u32,
    pub struct_size: u32,
    pub ctx: *mut c_void,
    /// Integer metadata (any integer type, or bool as 0/1).
    pub meta_int: unsafe extern "C" fn(ctx: *mut c_void, key: RfStr, out: *mut i64) -> i32,
    /// Float metadata (any numeric type).
    pub meta_float: unsafe extern "C" fn(ctx: *mut c_void, key: RfStr, out: *mut f64) -> i32,
    /// String metadata, borrowed for the duration of `build`.
    pub meta_str: unsafe extern "C" fn(ctx: *mut c_void, key: RfStr, out: *mut RfStr) -> i32,
    /// Numeric array metadata into `buf[..cap]`; writes the length to `len` (TOO_SMALL if > cap).
    pub meta_array_f64: unsafe extern "C" fn(ctx: *mut c_void, key: RfStr, buf: *mut f64, cap: usize, len: *mut usize) -> i32,
    /// Shape of a tensor in GGUF order (ne0 first), up to 4 dims; NOT_FOUND if absent.
    pub tensor_shape: unsafe extern "C" fn(ctx: *mut c_void, name: RfStr, dims: *mut i64, n_dims: *mut u32) -> i32,
    /// Record an op; writes the new node id.
    pub op: unsafe extern "C" fn(ctx: *mut c_void, op: *const RfOp, out: *mut RfNode) -> i32,
    /// Give the host an error message (copied by the host).
    pub set_error: unsafe extern "C" fn(ctx: *mut c_void, msg: RfStr),
    // ---- Appended (read by a plugin only when `struct_size` covers them; a host that predates
    // them has a table ending at `set_error`: see [`RfHostV1::has_extensions`]). ----
    /// Record an op with an extension record ([`RfOpExt`], may be null = no extension).
    pub op_ex: unsafe extern "C" fn(ctx: *mut c_void, op: *const RfOp, ext: *const RfOpExt, out: *mut RfNode) -> i32,
    /// Capability query: OK when the host supports what is asked ([`cap`]), NOT_FOUND when not.
    pub supports: unsafe extern "C" fn(ctx: *mut c_void, op: u32, what: u32, slot: u32, value: i64) -> i32,
    /// The host's message for the last callback that failed (OK and `out` set), or NOT_FOUND.
    /// `out` borrows host memory valid until the next callback.
    pub last_error: unsafe extern "C" fn(ctx: *mut c_void, out: *mut RfStr) -> i32,
}

impl RfHostV1 {
    /// Size of the first revision of the table (ending at `set_error`).
    pub const fn base_size() -> usize {
        std::mem::offset_of!(RfHostV1, op_ex)
    }

    /// Whether a table of `struct_size` bytes carries the appended callbacks (`op_ex`,
    /// `supports`, `last_error`).
    pub const fn has_extensions(struct_size: u32) -> bool {
        struct_size as usize >= std::mem::offset_of!(RfHostV1, last_error) + std::mem::size_of::<usize>()
    }
}

/// Run a plugin entry point body, turning a panic or an error into a status code and a message
/// handed to the host. Every `extern "C"` function of a Rust plugin goes through this.
///
/// # Safety
/// `host` must be null or point to a valid [`RfHostV1`] for the duration of the call (it is
/// dereferenced to report an error).
pub unsafe fn guard<F: FnOnce() -> Result<(), String> + std::panic::UnwindSafe>(host: *const RfHostV1, f: F) -> i32 {
    let report = |msg: &str| {
        if !host.is_null() {
            // SAFETY: the host pointer was passed to the entry point and is valid for the call.
            let h = unsafe { &*host };
            // SAFETY: set_error copies the message before returning.
            unsafe { (h.set_error)(h.ctx, RfStr::new(msg)) };
        }
    };
    match std::panic::catch_unwind(f) {
        Ok(Ok(())) => status::OK,
        Ok(Err(msg)) => {
            report(&msg);
            status::ERROR
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            report(&format!("plugin panicked: {msg}"));
            status::PANIC
        }
    }
}

/// Export a Rust plugin. Usage (in a `cdylib` crate):
///
/// ```ignore
/// rocmforge_abi::export_plugin! {
///     name: "llama", version: env!("CARGO_PKG_VERSION"),
///     archs: ARCHS, tensors: TENSORS, config: CONFIG,
///     build: build_graph,   // fn(&mut Builder, arch: &str) -> Result<(), OpError>
/// }
/// ```
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, version: $ver:expr, archs: $archs:expr, tensors: $tensors:expr, config: $config:expr, build: $build:path $(,)?) => {
        $crate::export_plugin! {
            name: $name, version: $ver, archs: $archs, tensors: $tensors, config: $config, build: $build,
            meta_claims: [] as [$crate::RfMetaClaim; 0],
        }
    };
    (name: $name:expr, version: $ver:expr, archs: $archs:expr, tensors: $tensors:expr, config: $config:expr, build: $build:path, meta_claims: $claims:expr $(,)?) => {
        #[doc(hidden)]
        static __ROCMFORGE_META_CLAIMS: &[$crate::RfMetaClaim] = &$claims;
        #[doc(hidden)]
        unsafe extern "C" fn __rocmforge_build(host: *const $crate::RfHostV1, arch: $crate::RfStr) -> i32 {
            let body = move || {
                // SAFETY: the host passes a valid table and a valid arch string for this call.
                let arch = unsafe { arch.as_str() }.ok_or_else(|| "architecture name is not UTF-8".to_string())?;
                // SAFETY: as above; the builder borrows the host table for the call only.
                let mut b = unsafe { $crate::Builder::from_raw(host) }.map_err(|e| e.to_string())?;
                $build(&mut b, arch).map_err(|e| e.to_string())
            };
            // SAFETY: `host` is the table the host passed to this entry point, valid for the call.
            unsafe { $crate::guard(host, body) }
        }
        #[doc(hidden)]
        static __ROCMFORGE_PLUGIN: $crate::RfPluginV1 = $crate::RfPluginV1 {
            abi_version: $crate::ABI_VERSION,
            struct_size: ::std::mem::size_of::<$crate::RfPluginV1>() as u32,
            name: $crate::RfStr::new($name),
            version: $crate::RfStr::new($ver),
            archs: $archs.as_ptr(),
            n_archs: $archs.len(),
            tensors: $tensors.as_ptr(),
            n_tensors: $tensors.len(),
            config: $config.as_ptr(),
            n_config: $config.len(),
            build: __rocmforge_build,
            meta_claims: __ROCMFORGE_META_CLAIMS.as_ptr(),
            n_meta_claims: __ROCMFORGE_META_CLAIMS.len(),
        };
        /// The plugin entry point (see rocmforge_abi::PLUGIN_SYMBOL).
        #[no_mangle]
        pub extern "C" fn rocmforge_plugin_v1() -> *const $crate::RfPluginV1 {
            &__ROCMFORGE_PLUGIN
        }
    };
}

/// Helpers to write static tables in Rust plugins.
pub const fn arch(gguf_arch: &'static str, hf_arch: &'static str) -> RfArchClaim {
    RfArchClaim { gguf_arch: RfStr::new(gguf_arch), hf_arch: RfStr::new(hf_arch) }
}
pub const fn tensor(gguf: &'static str, hf: &'static str, flags: u32, transform: u32) -> RfTensorMap {
    RfTensorMap { gguf: RfStr::new(gguf), hf: RfStr::new(hf), flags, transform }
}
pub const fn config(gguf: &'static str, hf: &'static str) -> RfConfigMap {
    RfConfigMap { gguf: RfStr::new(gguf), hf: RfStr::new(hf) }
}
pub const fn meta_claim(gguf_arch: &'static str, key: &'static str) -> RfMetaClaim {
    RfMetaClaim { gguf_arch: RfStr::new(gguf_arch), key: RfStr::new(key) }
}
