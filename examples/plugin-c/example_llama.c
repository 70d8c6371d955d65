/*
 * example_llama.c: a complete ROCmForge architecture plugin in C99, the "example_llama"
 * architecture (a LLaMA-family decoder under its own GGUF name). Read it next to
 * docs/plugins.md; build it with `make` (see the Makefile) and check it with
 * `rocmforge plugins check librocmforge_plugin_example_llama.so`.
 *
 *   token_embd -> for each layer {
 *       x += attn_output(attention(rope(q), rope(k), v))   over rms_norm(x, attn_norm)
 *       x += ffn_down(silu(ffn_gate(h)) * ffn_up(h))        with h = rms_norm(x, ffn_norm)
 *   } -> keep the output rows -> rms_norm(output_norm) -> output (or token_embd when tied)
 *
 * Four sections, like every plugin: (1) tables (claims, tensor map, config map), (2)
 * hyperparameters from metadata, (3) the graph, (4) the export. Everything the plugin hands the
 * host is static; strings the host returns are only read during build.
 */
#include <stdio.h>
#include <string.h>

#include "rocmforge_plugin.h"

/* ---- (1) Tables --------------------------------------------------------------------------- */

/* GGUF files say general.architecture = "example_llama"; HF config.json says
 * "architectures": ["ExampleLlamaForCausalLM"] (converted with this plugin's maps). */
static const RfArchClaim ARCHS[] = {{RF_STR_INIT("example_llama"), RF_STR_INIT("ExampleLlamaForCausalLM")}};

/* GGUF tensor name (the graph's vocabulary) <- HF name; {il} = layer. HF checkpoints store Q/K
 * for rotate-half RoPE: PERMUTE_Q/K convert them at load time to GGUF's interleaved layout. */
#define T(g, h, flags, tr) {RF_STR_INIT(g), RF_STR_INIT(h), flags, tr}
static const RfTensorMap TENSORS[] = {
    T("token_embd.weight", "model.embed_tokens.weight", 0, RF_TRANSFORM_NONE),
    T("output_norm.weight", "model.norm.weight", 0, RF_TRANSFORM_NONE),
    T("output.weight", "lm_head.weight", RF_TENSOR_FLAG_OPTIONAL, RF_TRANSFORM_NONE),
    T("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, RF_TRANSFORM_NONE),
    T("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", 0, RF_TRANSFORM_PERMUTE_Q),
    T("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", 0, RF_TRANSFORM_PERMUTE_K),
    T("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", 0, RF_TRANSFORM_NONE),
    T("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, RF_TRANSFORM_NONE),
    T("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, RF_TRANSFORM_NONE),
    T("blk.{il}.ffn_gate.weight", "model.layers.{il}.mlp.gate_proj.weight", 0, RF_TRANSFORM_NONE),
    T("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.up_proj.weight", 0, RF_TRANSFORM_NONE),
    T("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", 0, RF_TRANSFORM_NONE),
};

/* GGUF metadata key <- config.json key, for HF directories. */
static const RfConfigMap CONFIG[] = {
    {RF_STR_INIT("{arch}.block_count"), RF_STR_INIT("num_hidden_layers")},
    {RF_STR_INIT("{arch}.embedding_length"), RF_STR_INIT("hidden_size")},
    {RF_STR_INIT("{arch}.feed_forward_length"), RF_STR_INIT("intermediate_size")},
    {RF_STR_INIT("{arch}.attention.head_count"), RF_STR_INIT("num_attention_heads")},
    {RF_STR_INIT("{arch}.attention.head_count_kv"), RF_STR_INIT("num_key_value_heads")},
    {RF_STR_INIT("{arch}.attention.layer_norm_rms_epsilon"), RF_STR_INIT("rms_norm_eps")},
    {RF_STR_INIT("{arch}.rope.freq_base"), RF_STR_INIT("rope_theta")},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Helpers over the host table ---------------------------------------------------------- */

typedef struct {
    const RfHostV1 *h;
    int32_t rc; /* first failure; once set, every helper does nothing */
    char arch[64];
} Ctx;

static RfStr str(const char *s) {
    RfStr r;
    r.ptr = (const uint8_t *)s;
    r.len = strlen(s);
    return r;
}

static void fail(Ctx *c, int32_t rc, const char *msg) {
    if (c->rc != RF_STATUS_OK) return;
    c->h->set_error(c->h->ctx, str(msg));
    c->rc = rc;
}

/* Integer metadata "<arch>.<suffix>"; a missing key is an error naming it unless def >= 0. */
static int64_t meta_int(Ctx *c, const char *suffix, int64_t def) {
    char key[128], msg[192];
    int64_t v = 0;
    int32_t rc;
    if (c->rc != RF_STATUS_OK) return 0;
    snprintf(key, sizeof key, "%s.%s", c->arch, suffix);
    rc = c->h->meta_int(c->h->ctx, str(key), &v);
    if (rc == RF_STATUS_OK) return v;
    if (rc == RF_STATUS_NOT_FOUND && def >= 0) return def;
    snprintf(msg, sizeof msg, "example_llama: metadata key '%s' is %s", key, rc == RF_STATUS_NOT_FOUND ? "missing" : "not an integer");
    fail(c, RF_STATUS_ERROR, msg);
    return 0;
}

static float meta_float(Ctx *c, const char *suffix, double def) {
    char key[128];
    double v = def;
    if (c->rc != RF_STATUS_OK) return 0.0f;
    snprintf(key, sizeof key, "%s.%s", c->arch, suffix);
    if (c->h->meta_float(c->h->ctx, str(key), &v) != RF_STATUS_OK) v = def;
    return (float)v;
}

/* Record one op (unused slots stay RF_NO_NODE / 0, as the host checks). Returns RF_NO_NODE after
 * a failure: the host has recorded why, and build returns the status. */
static RfNode op(Ctx *c, uint32_t code, const char *name, RfNode a, RfNode b, RfNode d, const int64_t *ip, int nip,
                 const float *fp, int nfp, const char *tensor) {
    RfOp o;
    RfNode out = RF_NO_NODE;
    int i;
    if (c->rc != RF_STATUS_OK) return RF_NO_NODE;
    memset(&o, 0, sizeof o);
    o.code = code;
    o.inputs[0] = a;
    o.inputs[1] = b;
    o.inputs[2] = d;
    o.inputs[3] = RF_NO_NODE;
    for (i = 0; i < nip; i++) o.iparams[i] = ip[i];
    for (i = 0; i < nfp; i++) o.fparams[i] = fp[i];
    o.name = str(name);
    o.tensor = str(tensor ? tensor : "");
    c->rc = c->h->op(c->h->ctx, &o, &out);
    return c->rc == RF_STATUS_OK ? out : RF_NO_NODE;
}

#define NONE RF_NO_NODE
static RfNode weight(Ctx *c, const char *t) { return op(c, RF_OP_WEIGHT, t, NONE, NONE, NONE, NULL, 0, NULL, 0, t); }
static RfNode binary(Ctx *c, uint32_t code, const char *n, RfNode x, RfNode y) { return op(c, code, n, x, y, NONE, NULL, 0, NULL, 0, NULL); }
static RfNode rms_norm(Ctx *c, const char *n, RfNode x, RfNode w, float eps) {
    const int64_t group = 0; /* normalise whole rows */
    return op(c, RF_OP_RMS_NORM, n, x, w, NONE, &group, 1, &eps, 1, NULL);
}

/* "blk.<il>.<what>" (node names follow GGUF tensor names, for dumps and errors). */
static const char *nm(char *buf, int il, const char *what) {
    snprintf(buf, 96, "blk.%d.%s", il, what);
    return buf;
}

/* ---- (2) + (3) Hyperparameters and the graph ---------------------------------------------- */

static int32_t build(const RfHostV1 *host, RfStr arch) {
    Ctx cc, *c = &cc;
    char n[96], t[96];
    int64_t n_embd, n_layer, n_head, n_head_kv, head_dim, dims[4];
    uint32_t n_dims = 0;
    float eps, freq_base;
    RfNode tok_embd, x, lm_head;
    int il;

    if (host == NULL) return RF_STATUS_ERROR;
    memset(c, 0, sizeof *c);
    c->h = host;
    /* This plugin uses only the first revision of the host table; a plugin that calls op_ex,
     * supports or last_error first checks host->struct_size >= RF_HOST_V1_SIZE_WITH_EXTENSIONS. */
    if (host->abi_version != RF_ABI_VERSION || host->struct_size < RF_HOST_V1_BASE_SIZE) {
        fail(c, RF_STATUS_ERROR, "example_llama: the host speaks another plugin ABI");
        return c->rc;
    }
    if (arch.len == 0 || arch.len >= sizeof c->arch) {
        fail(c, RF_STATUS_ERROR, "example_llama: bad architecture name");
        return c->rc;
    }
    memcpy(c->arch, arch.ptr, arch.len); /* RfStr is (ptr, len), not NUL-terminated */

    n_embd = meta_int(c, "embedding_length", -1);
    n_layer = meta_int(c, "block_count", -1);
    n_head = meta_int(c, "attention.head_count", -1);
    n_head_kv = meta_int(c, "attention.head_count_kv", n_head);
    eps = meta_float(c, "attention.layer_norm_rms_epsilon", 1e-5);
    freq_base = meta_float(c, "rope.freq_base", 10000.0);
    if (c->rc != RF_STATUS_OK) return c->rc;
    if (n_head <= 0 || n_head_kv <= 0 || n_embd % n_head != 0) {
        fail(c, RF_STATUS_ERROR, "example_llama: embedding_length is not a multiple of head_count");
        return c->rc;
    }
    head_dim = n_embd / n_head;

    tok_embd = weight(c, "token_embd.weight");                                                    /* [n_embd, n_vocab] */
    x = op(c, RF_OP_GET_ROWS, "inp_embd", tok_embd, NONE, NONE, NULL, 0, NULL, 0, NULL);          /* [n, n_embd] */

    for (il = 0; il < n_layer && c->rc == RF_STATUS_OK; il++) {
        /* ROPE: n_head, head_dim, n_rot, mode 0 (interleaved pairs: GGUF's layout), n_ctx_orig;
         * freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow. */
        const int64_t rope_q[5] = {n_head, head_dim, head_dim, 0, 0}, rope_k[5] = {n_head_kv, head_dim, head_dim, 0, 0};
        const float rope_f[6] = {freq_base, 1.0f, 0.0f, 1.0f, 32.0f, 1.0f};
        /* ATTENTION: layer, n_head, n_head_kv, head_dim_k, head_dim_v, sliding window (0 = off),
         * causal; scale (0 = 1/sqrt(head_dim)), softcap (0 = off). */
        const int64_t attn_i[7] = {il, n_head, n_head_kv, head_dim, head_dim, 0, 1};
        const float attn_f[2] = {0.0f, 0.0f};
        RfNode h, q, k, v, a, ffn_inp, gate, up;

#define W(what) weight(c, nm(t, il, what))
        h = rms_norm(c, nm(n, il, "attn_norm"), x, W("attn_norm.weight"), eps);                  /* [n, n_embd] */
        q = binary(c, RF_OP_MATMUL, nm(n, il, "attn_q"), h, W("attn_q.weight"));                 /* [n, n_head*hd] */
        k = binary(c, RF_OP_MATMUL, nm(n, il, "attn_k"), h, W("attn_k.weight"));                 /* [n, n_kv*hd] */
        v = binary(c, RF_OP_MATMUL, nm(n, il, "attn_v"), h, W("attn_v.weight"));                 /* [n, n_kv*hd] */
        q = op(c, RF_OP_ROPE, nm(n, il, "attn_q_rope"), q, NONE, NONE, rope_q, 5, rope_f, 6, NULL);
        k = op(c, RF_OP_ROPE, nm(n, il, "attn_k_rope"), k, NONE, NONE, rope_k, 5, rope_f, 6, NULL);
        a = op(c, RF_OP_ATTENTION, nm(n, il, "attn"), q, k, v, attn_i, 7, attn_f, 2, NULL);     /* [n, n_head*hd] */
        a = binary(c, RF_OP_MATMUL, nm(n, il, "attn_output"), a, W("attn_output.weight"));      /* [n, n_embd] */
        ffn_inp = binary(c, RF_OP_ADD, nm(n, il, "ffn_inp"), a, x);

        h = rms_norm(c, nm(n, il, "ffn_norm"), ffn_inp, W("ffn_norm.weight"), eps);
        gate = binary(c, RF_OP_MATMUL, nm(n, il, "ffn_gate"), h, W("ffn_gate.weight"));         /* [n, n_ff] */
        up = binary(c, RF_OP_MATMUL, nm(n, il, "ffn_up"), h, W("ffn_up.weight"));               /* [n, n_ff] */
        h = binary(c, RF_OP_SWIGLU, nm(n, il, "ffn_act"), gate, up);                             /* silu(gate) * up */
        h = binary(c, RF_OP_MATMUL, nm(n, il, "ffn_down"), h, W("ffn_down.weight"));            /* [n, n_embd] */
        x = binary(c, RF_OP_ADD, nm(n, il, "l_out"), h, ffn_inp);
#undef W
    }

    x = op(c, RF_OP_OUTPUT_ROWS, "out_rows", x, NONE, NONE, NULL, 0, NULL, 0, NULL);              /* [m, n_embd] */
    x = rms_norm(c, "result_norm", x, weight(c, "output_norm.weight"), eps);
    /* Tied embeddings: without output.weight the token embedding is the LM head. */
    lm_head = host->tensor_shape(host->ctx, RF_STR_LIT("output.weight"), dims, &n_dims) == RF_STATUS_OK ? weight(c, "output.weight")
                                                                                                        : tok_embd;
    x = binary(c, RF_OP_MATMUL, "result_output", x, lm_head);                                     /* [m, n_vocab] */
    op(c, RF_OP_OUTPUT, "logits", x, NONE, NONE, NULL, 0, NULL, 0, NULL);
    return c->rc;
}

/* ---- (4) Export --------------------------------------------------------------------------- */

static const RfPluginV1 PLUGIN = {
    RF_ABI_VERSION,     sizeof(RfPluginV1), RF_STR_INIT("example_llama"), RF_STR_INIT("0.1.0"),
    ARCHS,              COUNT(ARCHS),       TENSORS,                       COUNT(TENSORS),
    CONFIG,             COUNT(CONFIG),      build,                         NULL, /* no conditional claims */
    0,
};

RF_PLUGIN_EXPORT const RfPluginV1 *rocmforge_plugin_v1(void) { return &PLUGIN; }
