/*
 * rocmforge_plugin.h: the ROCmForge architecture-plugin C ABI, version 1.
 *
 * This header is the C spelling of host/abi/src/lib.rs, field for field and constant for
 * constant; host/abi/tests/header.rs compiles a C program against it and checks every sizeof,
 * offsetof and constant against the Rust definitions, so the two cannot drift apart silently.
 * C99, no dependencies beyond <stdint.h> and <stddef.h>. examples/plugin-c/example_llama.c is a
 * complete plugin written against it (built with a Makefile, as a third party would), and
 * docs/plugins.md is the guide; tests/fixtures/c_plugin/tiny.c is the test suite's C plugin.
 *
 * How a plugin works
 * ------------------
 * A plugin is a shared library exporting one symbol, RF_PLUGIN_SYMBOL ("rocmforge_plugin_v1"):
 *
 *     const RfPluginV1 *rocmforge_plugin_v1(void);
 *
 * returning a pointer to a static RfPluginV1. The host reads abi_version and struct_size first
 * (they lead every version of the table) and refuses the plugin if abi_version differs from its
 * own or struct_size is smaller than the first version of RfPluginV1 (ending at build). It then calls build(host, arch) once per
 * model load; inside build the plugin asks the host for metadata (meta_*) and tensor shapes
 * (tensor_shape) and records the forward graph op by op (op). The plugin never touches devices,
 * weights or the KV cache. File names the host discovers: librocmforge_plugin_<name>.so (or
 * .dylib) and <name>.rfplugin.so.
 *
 * Contract
 * --------
 * - Append-only tables. Fields are never removed, reordered or retyped; new fields go at the
 *   end and struct_size says how many bytes the writer filled. A reader only reads fields that
 *   lie inside struct_size. abi_version changes only for incompatible changes.
 * - Strings and byte slices cross as RfStr (ptr, len): UTF-8, NOT NUL-terminated, ptr may be
 *   NULL when len is 0.
 * - Who frees: whoever allocates. Everything a plugin hands out (its RfPluginV1 and the arrays
 *   and strings it points to) must stay valid for the life of the process: the host never
 *   unloads a plugin and never frees plugin memory. Everything the host passes (the RfHostV1
 *   table, the arch string, strings returned by meta_str) is valid only for the duration of the
 *   build call; copy what you keep. Strings the plugin passes to the host (keys, op names,
 *   set_error messages) need only live for the duration of the callback: the host copies them.
 * - No unwinding across the boundary. Entry points and callbacks return a status; a C++ plugin
 *   must catch every exception, a Rust plugin every panic (rocmforge_abi::guard does). Unwinding
 *   through an extern "C" frame aborts the host.
 * - Errors. build returns RF_STATUS_OK or another status. Before returning an error the plugin
 *   describes it with host->set_error (the first message wins). When a host callback itself
 *   fails (op rejected for a shape error or a missing tensor) the host has already recorded a
 *   detailed message: the plugin should stop and return the status it got.
 * - Threading: the host may call build of the same plugin on several threads at once (its
 *   model manager loads several models concurrently); each call gets its own RfHostV1 and ctx,
 *   and the callbacks of one ctx share nothing with another's. Callbacks must be made on the
 *   thread that called build and before build returns: the host refuses a call from another
 *   thread (RF_STATUS_INVALID_ARGUMENT, and the build fails) and ignores a ctx that is no longer
 *   live. A plugin must not keep mutable global state without its own locking (static const
 *   tables are fine).
 * - Arguments are checked. A null, misaligned or absurdly long pointer argument, invalid UTF-8
 *   in a key or name, or a callback from the wrong thread is answered with
 *   RF_STATUS_INVALID_ARGUMENT (never a crash, as far as the host can tell: it cannot detect a
 *   dangling pointer) and fails the build with a message naming the callback and the argument.
 *   A panic inside the host while serving a callback answers RF_STATUS_PANIC and fails the build
 *   with the panic's message. last_error returns the host's message for the last failed
 *   callback, so a plugin can include it in its own.
 * - Unused op slots are checked. Every input, integer and float parameter slot that the host
 *   does not read for an op (see the table below) must be RF_NO_NODE / 0, and `tensor` must be
 *   empty except for RF_OP_WEIGHT; otherwise the op is refused with a message naming the op and
 *   the slot. A plugin setting a parameter that only a newer host understands therefore fails on
 *   an older host instead of computing wrong logits. Ask with `supports` before using anything
 *   newer than the first revision of v1.
 * - Growing ops. RfOp has four inputs and eight integer and eight float parameters; more go in
 *   an RfOpExt record passed with op_ex (inputs 4..8, parameters 8..16). RfOpExt starts with
 *   struct_size: the host reads the fields it knows and refuses the op if a byte past them is
 *   non-zero. New op codes, slots and enumerated values are only ever appended.
 * - Host table revisions. The first revision of RfHostV1 ends at set_error; op_ex, supports and
 *   last_error were appended. A plugin that uses them checks
 *   host->struct_size >= RF_HOST_V1_SIZE_WITH_EXTENSIONS first (the Rust Builder does).
 *
 * Graph model
 * -----------
 * Activations are row-major matrices [rows, cols]; rows are the batch's tokens until an
 * RF_OP_OUTPUT_ROWS op, after which they are the rows whose outputs were asked for. Weights are
 * leaves with GGUF dims (ne0 first): a matrix [k, n_out] is n_out rows of k values. Op
 * parameter slots (unused inputs are RF_NO_NODE, unused params 0):
 *
 *   op              inputs[0..4]              iparams[0..8]                         fparams[0..8]
 *   WEIGHT          -                         -                                     -              (tensor = GGUF name)
 *   GET_ROWS        table [n_embd, n_vocab]   src (RF_ROWS_SRC_*), id (for CONSTANT) -             -> [tokens, n_embd]
 *   RMS_NORM        x, w?                     group (0 = whole row)                 eps
 *   LAYER_NORM      x, w?, b?                 -                                     eps
 *   MATMUL          x [n, k], W [k, n_out] (1-D W [k] = [k, 1]), bias?  -           -              -> [n, n_out]
 *   ADD, MUL        a, b (same shape, a weight vector broadcast over rows, or an activation [n, 1]
 *                   broadcast over columns)
 *   SCALE           x                         -                                     s
 *   ROPE            x, freq_factors?          n_head, head_dim, n_rot, mode         freq_base, freq_scale, ext_factor,
 *                                             (0 = interleaved pairs, 2 = NeoX        attn_factor, beta_fast, beta_slow
 *                                             halves), n_ctx_orig, yarn range
 *                                             (RF_ROPE_YARN_*, appended)
 *   ATTENTION       q, k, v, sinks? [n_head]  layer, n_head, n_head_kv, head_dim_k,  scale (0 = 1/sqrt(head_dim_k)),
 *                   (sinks appended)          head_dim_v, sliding_window (0 = off),  softcap (0 = off)
 *                                             causal (0/1)
 *   SILU, GELU, GELU_ERF, SIGMOID   x
 *   SWIGLU, GEGLU   gate, up                  (silu(gate) * up, gelu_tanh(gate) * up)
 *   SOFTCAP         x                         -                                     cap  (cap * tanh(x / cap))
 *   VIEW            x                         offset, cols, head width (appended;   -              -> [n, cols] (head width w:
 *                                             0 = the whole row)                                   [n, (row/w)*cols], columns
 *                                                                                                  [offset, offset+cols) of
 *                                                                                                  every w-wide head)
 *   OUTPUT_ROWS     x
 *   OUTPUT          x                         kind (RF_OUTPUT_KIND_*)                              (logits or embeddings)
 *   POOL            x [tokens, n]             mode (RF_POOL_*)                      -              -> [sequences, n]
 *   L2_NORM         x                         -                                     eps  (x / max(|x|, eps))
 *   MOE_ROUTE       logits [n, n_expert]      k (experts used), gating (RF_MOE_GATING_*)  -        -> [n, 2k]: k weights, then
 *                                                                                                  the k expert ids as floats
 *                   appended: input 1 = selection bias? [n_expert] (added to the scores for the
 *                   choice only); iparams[2] = n_group, [3] = groups kept, [4] = group score
 *                   (RF_MOE_GROUP_*); fparams[0] = weight scale (0 = 1)
 *   MOE_GATE_UP     x [n, n_embd], route (a MOE_ROUTE node), gate_exps, up_exps [n_embd, n_ff, n_expert]
 *                                             k, activation (RF_MOE_ACT_*)          alpha, limit   -> [n, k*n_ff]
 *                   extension inputs 4, 5 (appended): gate_b?, up_b? [n_ff, n_expert]   (SWIGLU_OAI only)
 *   MOE_DOWN        h [n, k*n_ff], route, down_exps [n_ff, n_embd, n_expert], down_b? [n_embd, n_expert] (appended)
 *                                             k                                     -              -> [n, n_embd]
 *   HEAD_MATMUL     x [n, H*k], W [k, m, H]   -                                     -              -> [n, H*m] (x_h . W_h^T)
 *   CONCAT          a [n, H*ka], b [n, H*kb]  n_head H                              -              -> [n, H*(ka+kb)], [a_h | b_h]
 *   LATENT_ATTENTION q, kv                    as ATTENTION                          as ATTENTION   (V = the first head_dim_v
 *                                                                                                  columns of each K head)
 *
 * Slots not listed for an op are unused and must be RF_NO_NODE / 0 (checked). Enumerated
 * integer parameters (GET_ROWS src, ROPE mode, OUTPUT kind, POOL mode, MOE_ROUTE gating,
 * MOE_GATE_UP activation) accept only the values defined below; ask `supports` for newer ones.
 *
 * Mixture of experts is three ops because an op has four inputs: router logits come from an
 * ordinary MATMUL, MOE_ROUTE picks k experts per row, MOE_GATE_UP runs only the selected experts'
 * gate/up projections (slot s of a row fills columns [s*n_ff, (s+1)*n_ff)), and MOE_DOWN sums the
 * selected experts' down projections weighted by the routing weights.
 *
 * After POOL the rows are the batch's sequences (one row each, in chunk order); every chunk of a
 * pooled batch must hold a whole sequence (pos_start 0).
 *
 * Modelled on the Arrow C data interface (plain structs, ownership stated per field, a version
 * handshake) and the ggml op vocabulary.
 */
#ifndef ROCMFORGE_PLUGIN_H
#define ROCMFORGE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The exported symbol every plugin defines, and the ABI version of this header. */
#define RF_PLUGIN_SYMBOL "rocmforge_plugin_v1"
#define RF_ABI_VERSION 1u

/* Status codes returned by entry points and host callbacks (never renumbered). */
#define RF_STATUS_OK 0
#define RF_STATUS_ERROR 1     /* generic failure; the message went through set_error */
#define RF_STATUS_NOT_FOUND 2 /* a metadata key or tensor does not exist */
#define RF_STATUS_WRONG_TYPE 3 /* a metadata key exists with another type */
#define RF_STATUS_PANIC 4     /* the callee panicked/threw; the message went through set_error */
#define RF_STATUS_TOO_SMALL 5 /* a caller's buffer was too small; the needed length was written */
#define RF_STATUS_INVALID_ARGUMENT 6 /* a bad pointer/string/thread: a plugin bug; the build fails */

/* What a capability query (RfHostV1.supports) asks about. */
#define RF_CAP_OP 0u           /* is op code `op` known? (slot, value ignored) */
#define RF_CAP_INPUT 1u        /* does `op` read input `slot` (0..8)? */
#define RF_CAP_IPARAM 2u       /* does `op` read integer parameter `slot` (0..16)? */
#define RF_CAP_FPARAM 3u       /* does `op` read float parameter `slot` (0..16)? */
#define RF_CAP_IPARAM_VALUE 4u /* does `op` accept `value` in integer parameter `slot`? */

/* Load-time weight transforms a tensor-map entry may declare (applied to Hugging Face tensors). */
#define RF_TRANSFORM_NONE 0u
#define RF_TRANSFORM_PERMUTE_Q 1u /* HF rotate-half Q rows -> GGUF interleaved (attention.head_count) */
#define RF_TRANSFORM_PERMUTE_K 2u /* same for K (attention.head_count_kv) */
#define RF_TRANSFORM_ADD_ONE 3u   /* store 1 + w (Gemma RMSNorm weights) */
/* Fused gate/up with halves interleaved along the output dim (gpt-oss gate_up_proj): the even
 * (gate) or odd (up) entries of the last HF dim; a 3-D input-major [n_expert, in, 2*n_ff] weight
 * also becomes output-major (GGUF [in, n_ff, n_expert]). */
#define RF_TRANSFORM_INTERLEAVED_GATE 4u
#define RF_TRANSFORM_INTERLEAVED_UP 5u
#define RF_TRANSFORM_TRANSPOSE 6u /* input-major x @ W weight [.., in, out]: last two HF dims swapped */
/* DeepSeek-V2 kv_b split per head (derived rows, HF name "gguf:blk.{il}.attn_kv_b.weight"):
 * attn_k_b [dn, kv_lora_rank, n_head] (key half, transposed) and attn_v_b [kv_lora_rank, dv, n_head]. */
#define RF_TRANSFORM_KV_B_TO_K_B 7u
#define RF_TRANSFORM_KV_B_TO_V_B 8u

/* Tensor-map entry flags. */
#define RF_TENSOR_FLAG_OPTIONAL 1u /* the tensor may be absent (tied output, biases) */

/* Op codes (append only; slot layout in the table above). */
#define RF_OP_WEIGHT 1u
#define RF_OP_GET_ROWS 2u
#define RF_OP_RMS_NORM 3u
#define RF_OP_LAYER_NORM 4u
#define RF_OP_MATMUL 5u
#define RF_OP_ADD 6u
#define RF_OP_MUL 7u
#define RF_OP_SCALE 8u
#define RF_OP_ROPE 9u
#define RF_OP_ATTENTION 10u
#define RF_OP_SILU 11u
#define RF_OP_GELU 12u
#define RF_OP_GELU_ERF 13u
#define RF_OP_SWIGLU 14u
#define RF_OP_GEGLU 15u
#define RF_OP_SOFTCAP 16u
#define RF_OP_VIEW 17u
#define RF_OP_OUTPUT_ROWS 18u
#define RF_OP_OUTPUT 19u
#define RF_OP_POOL 20u
#define RF_OP_L2_NORM 21u
#define RF_OP_MOE_ROUTE 22u
#define RF_OP_MOE_GATE_UP 23u
#define RF_OP_MOE_DOWN 24u
#define RF_OP_SIGMOID 25u
#define RF_OP_HEAD_MATMUL 26u
#define RF_OP_CONCAT 27u
#define RF_OP_LATENT_ATTENTION 28u

/* MOE_ROUTE iparams[1]: softmax over all experts, then top-k as is, or top-k renormalised to
 * sum 1 (= softmax over the top-k logits: Mixtral, Qwen3-MoE norm_topk_prob). */
#define RF_MOE_GATING_SOFTMAX INT64_C(0)
#define RF_MOE_GATING_SOFTMAX_NORM INT64_C(1)
/* Sigmoid scores instead of a softmax, top-k as is or renormalised (DeepSeek-V3). */
#define RF_MOE_GATING_SIGMOID INT64_C(2)
#define RF_MOE_GATING_SIGMOID_NORM INT64_C(3)

/* MOE_ROUTE iparams[4] (appended): a group's score for group-limited routing. */
#define RF_MOE_GROUP_MAX INT64_C(0)      /* largest score in the group (DeepSeek-V2) */
#define RF_MOE_GROUP_TOP2_SUM INT64_C(1) /* sum of the two largest (DeepSeek-V3, llama.cpp) */

/* MOE_GATE_UP iparams[1]. */
#define RF_MOE_ACT_SWIGLU INT64_C(0) /* silu(gate) * up */
#define RF_MOE_ACT_GEGLU INT64_C(1)  /* gelu_tanh(gate) * up */
/* gpt-oss: g = min(gate, limit), u = clamp(up, -limit, limit), (u + 1) * g * sigmoid(alpha * g);
 * alpha = fparams[0], limit = fparams[1]. */
#define RF_MOE_ACT_SWIGLU_OAI INT64_C(2)

/* ROPE iparams[5] (appended): YaRN's correction range rounded outward to whole dims (ggml,
 * transformers' truncate = True) or exact (truncate = False, gpt-oss). */
#define RF_ROPE_YARN_TRUNCATED INT64_C(0)
#define RF_ROPE_YARN_EXACT INT64_C(1)

/* GET_ROWS iparams[0]: which ids are looked up (0 = the tokens, the original meaning). */
#define RF_ROWS_SRC_TOKENS INT64_C(0)    /* the batch's token ids */
#define RF_ROWS_SRC_POSITIONS INT64_C(1) /* each token's position in its sequence */
#define RF_ROWS_SRC_CONSTANT INT64_C(2)  /* iparams[1] for every token (BERT token type 0) */

/* POOL iparams[0] (llama.cpp's llama_pooling_type values). */
#define RF_POOL_MEAN INT64_C(1)
#define RF_POOL_CLS INT64_C(2)
#define RF_POOL_LAST INT64_C(3)

/* OUTPUT iparams[0]. */
#define RF_OUTPUT_KIND_LOGITS INT64_C(0)
#define RF_OUTPUT_KIND_EMBEDDING INT64_C(1)

/* Node handle in the graph being built; RF_NO_NODE marks an unused input. */
typedef uint32_t RfNode;
#define RF_NO_NODE UINT32_MAX

/* A borrowed UTF-8 string or byte slice: (ptr, len), never NUL-terminated by contract. */
typedef struct RfStr {
    const uint8_t *ptr;
    size_t len;
} RfStr;

/* One row of a plugin's tensor table: GGUF name <- Hugging Face name ("{il}" = layer index; "{xid}"
 * in the HF name = expert index: experts 0..n are stacked into one tensor with one more dim; an HF
 * name "gguf:<GGUF name>" derives the tensor at load from that tensor of the same model by the
 * row's transform, when the model lacks it). */
typedef struct RfTensorMap {
    RfStr gguf;
    RfStr hf;
    uint32_t flags;     /* RF_TENSOR_FLAG_* */
    uint32_t transform; /* RF_TRANSFORM_* */
} RfTensorMap;

/* One row of a plugin's config map: GGUF key ("{arch}" = architecture) <- config.json key
 * (dotted path for nested objects). */
typedef struct RfConfigMap {
    RfStr gguf;
    RfStr hf;
} RfConfigMap;

/* An architecture claim: GGUF general.architecture name and/or HF "architectures" name. For an
 * HF claim, gguf_arch names the GGUF architecture the converted metadata uses. */
typedef struct RfArchClaim {
    RfStr gguf_arch;
    RfStr hf_arch;
} RfArchClaim;

/* A conditional GGUF claim: the plugin serves files whose general.architecture is gguf_arch AND
 * whose metadata key `key` ("{arch}" = gguf_arch) is present with a non-zero number, true, a
 * non-empty string or a non-empty array. It takes precedence over plain claims of gguf_arch
 * (Mixtral GGUF files say "llama" and carry llama.expert_count). */
typedef struct RfMetaClaim {
    RfStr gguf_arch;
    RfStr key;
} RfMetaClaim;

/* One recorded op (see the slot table above). The strings only need to live for the op call. */
typedef struct RfOp {
    uint32_t code;      /* RF_OP_* */
    RfNode inputs[4];   /* RF_NO_NODE when unused */
    int64_t iparams[8]; /* 0 when unused */
    float fparams[8];   /* 0 when unused */
    RfStr name;         /* node name for dumps and errors, e.g. "blk.3.attn_q" */
    RfStr tensor;       /* GGUF tensor name, for RF_OP_WEIGHT */
} RfOp;

/* Extension record of an op (size-prefixed, append-only): slots past RfOp's. inputs[i] is input
 * 4 + i, iparams[i] integer parameter 8 + i, fparams[i] float parameter 8 + i; unused inputs
 * RF_NO_NODE, unused parameters 0. No op of ABI v1 uses these slots yet. */
typedef struct RfOpExt {
    uint32_t struct_size; /* sizeof(RfOpExt) as compiled by the plugin */
    uint32_t flags;       /* reserved: 0 */
    RfNode inputs[4];
    int64_t iparams[8];
    float fparams[8];
} RfOpExt;

/* The table the host gives to build (version 1, append-only). `ctx` is opaque: pass it back as
 * the first argument of every callback. Every callback returns RF_STATUS_*. */
typedef struct RfHostV1 {
    uint32_t abi_version;
    uint32_t struct_size;
    void *ctx;
    /* Integer metadata (any integer type, or bool as 0/1). */
    int32_t (*meta_int)(void *ctx, RfStr key, int64_t *out);
    /* Float metadata (any numeric type). */
    int32_t (*meta_float)(void *ctx, RfStr key, double *out);
    /* String metadata; *out borrows host memory valid until build returns. */
    int32_t (*meta_str)(void *ctx, RfStr key, RfStr *out);
    /* Numeric array metadata into buf[0..cap]; writes the length to *len. Returns
     * RF_STATUS_TOO_SMALL (with *len set) when *len > cap: call with cap 0 to ask the length. */
    int32_t (*meta_array_f64)(void *ctx, RfStr key, double *buf, size_t cap, size_t *len);
    /* Tensor shape in GGUF order (ne0 first) into dims[0..4]; RF_STATUS_NOT_FOUND if absent. */
    int32_t (*tensor_shape)(void *ctx, RfStr name, int64_t *dims, uint32_t *n_dims);
    /* Record an op; writes the new node id to *out. A non-OK status means the host rejected it
     * (and recorded why): stop building and return that status. */
    int32_t (*op)(void *ctx, const RfOp *op, RfNode *out);
    /* Describe the error build is about to return; the host copies msg (first message wins). */
    void (*set_error)(void *ctx, RfStr msg);
    /* ---- Appended: present when struct_size >= RF_HOST_V1_SIZE_WITH_EXTENSIONS. ---- */
    /* Record an op with an extension record (ext may be NULL: same as op). */
    int32_t (*op_ex)(void *ctx, const RfOp *op, const RfOpExt *ext, RfNode *out);
    /* Capability query (RF_CAP_*): RF_STATUS_OK when supported, RF_STATUS_NOT_FOUND when not. */
    int32_t (*supports)(void *ctx, uint32_t op, uint32_t what, uint32_t slot, int64_t value);
    /* The host's message for the last failed callback (RF_STATUS_OK, *out borrows host memory
     * valid until the next callback), or RF_STATUS_NOT_FOUND when nothing failed. */
    int32_t (*last_error)(void *ctx, RfStr *out);
} RfHostV1;

/* Size of the first revision of RfHostV1 (ending at set_error), and the size from which the
 * appended callbacks are present. */
#define RF_HOST_V1_BASE_SIZE offsetof(RfHostV1, op_ex)
#define RF_HOST_V1_SIZE_WITH_EXTENSIONS (offsetof(RfHostV1, last_error) + sizeof(void *))

/* The table a plugin exports (version 1, append-only). All pointers are to static data. */
typedef struct RfPluginV1 {
    uint32_t abi_version; /* RF_ABI_VERSION */
    uint32_t struct_size; /* sizeof(RfPluginV1) as compiled by the plugin */
    RfStr name;           /* plugin name, e.g. "llama" */
    RfStr version;        /* plugin version string */
    const RfArchClaim *archs;
    size_t n_archs;
    const RfTensorMap *tensors;
    size_t n_tensors;
    const RfConfigMap *config;
    size_t n_config;
    /* Build the forward graph for `arch` (a GGUF architecture name) through `host`. Never NULL:
     * the host refuses a table without it. */
    int32_t (*build)(const RfHostV1 *host, RfStr arch);
    /* Appended: conditional GGUF claims (may be NULL with n_meta_claims 0). A host reads them
     * only when struct_size covers them. */
    const RfMetaClaim *meta_claims;
    size_t n_meta_claims;
} RfPluginV1;

/* The entry point's type; a plugin defines `RF_PLUGIN_EXPORT const RfPluginV1
 * *rocmforge_plugin_v1(void)`. */
typedef const RfPluginV1 *(*RfPluginEntryV1)(void);

#if defined(_WIN32)
#define RF_PLUGIN_EXPORT __declspec(dllexport)
#elif defined(__GNUC__)
#define RF_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define RF_PLUGIN_EXPORT
#endif

/* RfStr from a string literal (not a pointer: sizeof must see the array). RF_STR_INIT is for
 * static initializers, RF_STR_LIT for expressions. */
#define RF_STR_INIT(s) {(const uint8_t *)(s), sizeof(s) - 1}
#define RF_STR_LIT(s) ((RfStr)RF_STR_INIT(s))

#ifdef __cplusplus
}
#endif

#endif /* ROCMFORGE_PLUGIN_H */
