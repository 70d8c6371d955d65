//! The plugin ABI from C, end to end, and every way loading or building a plugin can fail.
//!
//! `tests/fixtures/c_plugin/tiny.c` (the "tinyc" architecture, plain C99 against
//! `host/abi/include/rocmforge_plugin.h`) is compiled here with the system C compiler into a
//! temporary directory, in a good build and several faulty ones (its compile-time switches). A
//! tiny random-weight F32 GGUF (2 layers, GQA 4 heads / 2 KV heads, tied embeddings, a
//! non-default RoPE base) is written with our `GgufWriter`; the C plugin builds its graph through
//! the host table and the CPU executor runs a prompt plus two decode steps over a paged f16 KV
//! cache with a scattered block table. The logits are compared with a plain f64 forward pass
//! written below from the maths (RMSNorm, matmul, ggml's "normal" interleaved RoPE, causal
//! softmax attention with GQA, SwiGLU), independent of the CPU backend's code.
//!
//! Bound: max |logit - reference| ≤ 2e-3 · max(1, max |reference|), per row. The executor
//! rounds K and V to f16 in the cache (relative error ≤ 2^-11 per element) and computes in f32;
//! measured here: 2.5e-3 absolute with max |logit| ≈ 15, i.e. 1.6e-4 relative, so the bound
//! leaves ~12× margin. A wrong RoPE style, RoPE base or GQA head mapping misses it by 5× to
//! 200× (tried by mutating the reference; the NeoX-RoPE check below stays in the test).
//!
//! Failure modes, each a `RuntimeError` naming the file, with the rest of the registry intact:
//! no entry symbol, ABI version 99, a too-short table, a file that is not a library, an error
//! reported by build through set_error, a shape error (node named), a missing tensor (tensor and
//! architecture named), an unknown architecture (available ones listed), bad metadata.
//!
//! Modelled on llama.cpp's tests/test-llama-archs.cpp (tiny random models per architecture)
//! and llama2.c's run.c (the reference forward pass).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rocmforge_model::gguf::{GgufArray, GgufValue, GgufWriter};
use rocmforge_quant::GgmlType;
use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, ModelSource, Registry, RuntimeError};

// ---------------------------------------------------------------------------------------------
// Compiling the C plugins.
// ---------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The plugin files this test process built (once, shared by every test).
struct Plugins {
    good: PathBuf,
    abi99: PathBuf,
    short_table: PathBuf,
    no_entry: PathBuf,
    fail_build: PathBuf,
    null_build: PathBuf,
    rope_mode1: PathBuf,
    attn_slot7: PathBuf,
    null_out: PathBuf,
    /// The good plugin under another name ("tinyc_b"): claims the same architectures.
    other_name: PathBuf,
    /// A directory with a good plugin, two broken ones and an unrelated file.
    mixed_dir: PathBuf,
    work: PathBuf,
}

fn cc_plugin(out: &Path, defines: &[&str]) {
    let src = repo_root().join("tests/fixtures/c_plugin/tiny.c");
    let inc = repo_root().join("host/abi/include");
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c99", "-O1", "-Wall", "-Wextra", "-pedantic", "-Werror", "-shared", "-fPIC", "-fvisibility=hidden"])
        .arg("-I")
        .arg(&inc)
        .args(defines)
        .arg(&src)
        .arg("-o")
        .arg(out);
    match cmd.output() {
        Err(e) => panic!("cannot run the C compiler `cc` ({e}): install gcc or clang; this test compiles {}", src.display()),
        Ok(o) if !o.status.success() => panic!(
            "cc {defines:?} failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

fn plugins() -> &'static Plugins {
    static P: OnceLock<Plugins> = OnceLock::new();
    P.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("c_plugin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let mixed_dir = work.join("mixed");
        std::fs::create_dir_all(&mixed_dir).expect("create the test plugin directory");
        let p = Plugins {
            good: work.join("librocmforge_plugin_tinyc.so"),
            abi99: work.join("librocmforge_plugin_tinyc_abi99.so"),
            short_table: work.join("librocmforge_plugin_tinyc_short.so"),
            no_entry: work.join("librocmforge_plugin_tinyc_noentry.so"),
            fail_build: work.join("librocmforge_plugin_tinyc_failbuild.so"),
            null_build: work.join("librocmforge_plugin_tinyc_nullbuild.so"),
            rope_mode1: work.join("librocmforge_plugin_tinyc_ropemode1.so"),
            attn_slot7: work.join("librocmforge_plugin_tinyc_attnslot7.so"),
            null_out: work.join("librocmforge_plugin_tinyc_nullout.so"),
            other_name: work.join("librocmforge_plugin_tinyc_b.so"),
            mixed_dir: mixed_dir.clone(),
            work,
        };
        cc_plugin(&p.good, &[]);
        cc_plugin(&p.abi99, &["-DTINYC_ABI_VERSION=99"]);
        cc_plugin(&p.short_table, &["-DTINYC_STRUCT_SIZE=8"]);
        cc_plugin(&p.no_entry, &["-DTINYC_NO_ENTRY"]);
        cc_plugin(&p.fail_build, &["-DTINYC_FAIL_BUILD"]);
        cc_plugin(&p.null_build, &["-DTINYC_NULL_BUILD"]);
        cc_plugin(&p.rope_mode1, &["-DTINYC_ROPE_MODE=1"]);
        cc_plugin(&p.attn_slot7, &["-DTINYC_ATTN_SLOT7=4096"]);
        cc_plugin(&p.null_out, &["-DTINYC_NULL_OUT"]);
        cc_plugin(&p.other_name, &["-DTINYC_NAME=\"tinyc_b\""]);
        cc_plugin(&mixed_dir.join("librocmforge_plugin_tinyc.so"), &[]);
        cc_plugin(&mixed_dir.join("librocmforge_plugin_zz_abi99.so"), &["-DTINYC_ABI_VERSION=99"]);
        cc_plugin(&mixed_dir.join("broken.rfplugin.so"), &["-DTINYC_NO_ENTRY"]);
        std::fs::write(mixed_dir.join("README.txt"), "not a plugin: ignored by discovery").expect("write README.txt");
        p
    })
}

// ---------------------------------------------------------------------------------------------
// A tiny random-weight "tinyc" model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Hp {
    n_vocab: usize,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    n_ff: usize,
    n_layer: usize,
    eps: f32,
    freq_base: f32,
}

const HP: Hp = Hp { n_vocab: 64, n_embd: 32, n_head: 4, n_head_kv: 2, n_ff: 48, n_layer: 2, eps: 1e-5, freq_base: 100.0 };

impl Hp {
    fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// One tensor: GGUF name, GGUF dims (ne0 first), f32 values (row-major over reversed dims).
#[derive(Clone)]
struct T {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

/// SplitMix64: deterministic weights without a dependency.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn random_tensors(hp: &Hp, seed: u64) -> Vec<T> {
    let mut rng = Rng(seed);
    let mut t = |name: String, dims: Vec<usize>, center: f32, spread: f32| {
        let n = dims.iter().product();
        T { name, dims, data: (0..n).map(|_| center + spread * rng.uniform()).collect() }
    };
    let (e, hd) = (hp.n_embd, hp.head_dim());
    // Matrices scaled ~1/sqrt(k) (k = ne0) so activations stay O(1); norms around 1.
    let mat = |k: usize| 1.0 / (k as f32).sqrt();
    let mut v = vec![t("token_embd.weight".into(), vec![e, hp.n_vocab], 0.0, 1.0)];
    for il in 0..hp.n_layer {
        let n = |s: &str| format!("blk.{il}.{s}.weight");
        v.push(t(n("attn_norm"), vec![e], 1.0, 0.2));
        v.push(t(n("attn_q"), vec![e, hp.n_head * hd], 0.0, 2.0 * mat(e)));
        v.push(t(n("attn_k"), vec![e, hp.n_head_kv * hd], 0.0, 2.0 * mat(e)));
        v.push(t(n("attn_v"), vec![e, hp.n_head_kv * hd], 0.0, mat(e)));
        v.push(t(n("attn_output"), vec![hp.n_head * hd, e], 0.0, mat(hp.n_head * hd)));
        v.push(t(n("ffn_norm"), vec![e], 1.0, 0.2));
        v.push(t(n("ffn_gate"), vec![e, hp.n_ff], 0.0, 2.0 * mat(e)));
        v.push(t(n("ffn_up"), vec![e, hp.n_ff], 0.0, mat(e)));
        v.push(t(n("ffn_down"), vec![hp.n_ff, e], 0.0, mat(hp.n_ff)));
    }
    v.push(t("output_norm.weight".into(), vec![e], 1.0, 0.2));
    v
}

fn u32v(x: usize) -> GgufValue {
    GgufValue::U32(x as u32)
}

/// Metadata of a tinyc model; `head_count_kv` goes in as one value per layer (an array), which
/// the C plugin reads through meta_array_f64.
fn metadata(hp: &Hp, arch: &str) -> Vec<(String, GgufValue)> {
    vec![
        ("general.architecture".into(), GgufValue::Str(arch.into())),
        ("general.name".into(), GgufValue::Str("tinyc random test model".into())),
        (format!("{arch}.block_count"), u32v(hp.n_layer)),
        (format!("{arch}.embedding_length"), u32v(hp.n_embd)),
        (format!("{arch}.feed_forward_length"), u32v(hp.n_ff)),
        (format!("{arch}.attention.head_count"), u32v(hp.n_head)),
        (format!("{arch}.attention.head_count_kv"), GgufValue::Array(GgufArray::U32(vec![hp.n_head_kv as u32; hp.n_layer]))),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), GgufValue::F32(hp.eps)),
        (format!("{arch}.rope.freq_base"), GgufValue::F32(hp.freq_base)),
    ]
}

fn write_gguf(path: &Path, meta: &[(String, GgufValue)], tensors: &[T]) {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(k.clone(), v.clone());
    }
    for t in tensors {
        w.add_tensor_info(t.name.clone(), t.dims.iter().map(|&d| d as u64).collect(), GgmlType::F32).expect("tensor info");
    }
    w.write_file(path, |i| Ok(tensors[i].data.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())).expect("write GGUF");
}

/// Write a model variant to the work directory and return its path.
fn model_file(name: &str, meta: &[(String, GgufValue)], tensors: &[T]) -> PathBuf {
    let path = plugins().work.join(format!("{name}.gguf"));
    write_gguf(&path, meta, tensors);
    path
}

// ---------------------------------------------------------------------------------------------
// The f64 reference forward pass.
// ---------------------------------------------------------------------------------------------

fn get<'a>(ts: &'a [T], name: &str) -> Vec<f64> {
    let t: &'a T = ts.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("reference: no tensor {name}"));
    t.data.iter().map(|&x| x as f64).collect()
}

/// `W x` for W in GGUF layout `[k, n_out]`: n_out rows of k.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * s * g).collect()
}

/// Rotary embedding of every head of `x` at `pos`. Normal mode (ggml's default, what GGUF
/// LLaMA-style weights expect) rotates adjacent pairs (2i, 2i+1); NeoX mode pairs (i, i + d/2).
/// Angle of pair i: pos · base^(-2i/d).
fn rope(x: &mut [f64], head_dim: usize, pos: usize, base: f64, neox: bool) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
            let (c, s) = (theta.cos(), theta.sin());
            let (a, b) = if neox { (i, i + head_dim / 2) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// Logits for every position of `tokens` (one sequence from position 0), with the LM head
/// `output.weight` when the model has one, else the token embedding (tied).
fn reference_logits(hp: &Hp, ts: &[T], tokens: &[u32], neox: bool) -> Vec<Vec<f64>> {
    let head = if ts.iter().any(|t| t.name == "output.weight") { get(ts, "output.weight") } else { get(ts, "token_embd.weight") };
    reference_hidden(hp, ts, tokens, neox).iter().map(|h| matvec(&head, h)).collect()
}

/// The final normed hidden state (what the LM head multiplies) of every position.
fn reference_hidden(hp: &Hp, ts: &[T], tokens: &[u32], neox: bool) -> Vec<Vec<f64>> {
    let (e, hd, eps) = (hp.n_embd, hp.head_dim(), hp.eps as f64);
    let group = hp.n_head / hp.n_head_kv;
    let embd = get(ts, "token_embd.weight");
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&t| embd[t as usize * e..(t as usize + 1) * e].to_vec()).collect();
    for il in 0..hp.n_layer {
        let w = |s: &str| get(ts, &format!("blk.{il}.{s}.weight"));
        let (wq, wk, wv, wo) = (w("attn_q"), w("attn_k"), w("attn_v"), w("attn_output"));
        let (an, fnw, wg, wu, wd) = (w("attn_norm"), w("ffn_norm"), w("ffn_gate"), w("ffn_up"), w("ffn_down"));
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let h = rmsnorm(x, &an, eps);
            let mut q = matvec(&wq, &h);
            let mut k = matvec(&wk, &h);
            rope(&mut q, hd, pos, hp.freq_base as f64, neox);
            rope(&mut k, hd, pos, hp.freq_base as f64, neox);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, &h));
        }
        for (pos, x) in xs.iter_mut().enumerate() {
            let mut attn = vec![0.0; hp.n_head * hd];
            for h in 0..hp.n_head {
                let kvh = h / group; // query head h reads KV head h / (n_head / n_head_kv)
                let q = &qs[pos][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|s| q.iter().zip(&ks[s][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = p.iter().sum();
                for (s, ps) in p.iter().enumerate() {
                    for d in 0..hd {
                        attn[h * hd + d] += ps / z * vs[s][kvh * hd + d];
                    }
                }
            }
            let o = matvec(&wo, &attn);
            let x1: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
            let h2 = rmsnorm(&x1, &fnw, eps);
            let (g, u) = (matvec(&wg, &h2), matvec(&wu, &h2));
            let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let d = matvec(&wd, &act);
            *x = x1.iter().zip(&d).map(|(a, b)| a + b).collect();
        }
    }
    let on = get(ts, "output_norm.weight");
    xs.iter().map(|x| rmsnorm(x, &on, eps)).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// The reference model, written once per process (tests run in parallel).
fn good_model() -> (PathBuf, Vec<T>) {
    static M: OnceLock<(PathBuf, Vec<T>)> = OnceLock::new();
    M.get_or_init(|| {
        let ts = random_tensors(&HP, 0x7171_c0de);
        (model_file("good", &metadata(&HP, "tinyc"), &ts), ts)
    })
    .clone()
}

fn load_good_registry() -> Registry {
    let reg = Registry::from_paths(&[plugins().good.clone()]);
    assert!(reg.failures.is_empty(), "{:?}", reg.failures);
    reg
}

/// Build the graph of `model` with the registry's plugin for its architecture.
fn build(reg: &Registry, model: &Path) -> Result<rocmforge_runtime::Graph, RuntimeError> {
    let src = ModelSource::open(model, reg)?;
    let plugin = reg.for_gguf_arch(src.arch())?;
    build_graph(plugin, &src)
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------
// The C plugin, end to end.
// ---------------------------------------------------------------------------------------------

#[test]
fn c_plugin_loads_with_its_tables() {
    let reg = load_good_registry();
    assert_eq!(reg.plugins.len(), 1);
    let p = &reg.plugins[0];
    assert_eq!((p.name.as_str(), p.version.as_str()), ("tinyc", "0.1.0"));
    assert_eq!(p.archs, vec![("tinyc".to_string(), "TinyCForCausalLM".to_string())]);
    assert_eq!(p.tensors.len(), 12);
    let out = p.tensors.iter().find(|t| t.gguf == "output.weight").expect("output.weight row");
    assert!(out.optional && out.hf == "lm_head.weight");
    let q = p.tensors.iter().find(|t| t.gguf == "blk.{il}.attn_q.weight").expect("attn_q row");
    assert_eq!(q.transform, rocmforge_abi::transform::PERMUTE_Q);
    assert!(p.config.contains(&("{arch}.rope.freq_base".to_string(), "rope_theta".to_string())));
    assert_eq!(reg.available(), vec!["TinyCForCausalLM".to_string(), "tinyc".to_string()]);
}

#[test]
fn c_plugin_graph_matches_f64_reference() {
    let reg = load_good_registry();
    let (model, ts) = good_model();
    let src = ModelSource::open(&model, &reg).expect("open the tinyc GGUF");
    let plugin = reg.for_gguf_arch(src.arch()).expect("tinyc is served");
    let graph = build_graph(plugin, &src).expect("the C plugin builds its graph");
    // embd: 2 nodes; per layer 24 (9 weights + 15 ops); tail: out_rows, norm weight, norm,
    // matmul, output.
    assert_eq!(graph.nodes.len(), 2 + 24 * HP.n_layer + 5);
    assert_eq!(graph.layers.len(), HP.n_layer);
    assert!(graph.nodes.iter().any(|n| n.name == "blk.1.attn_k_rope"));

    let mut exec = Executor::new(graph, &src, KvConfig { block_size: 2, n_blocks: 8 }).expect("executor");
    assert_eq!(exec.n_out_cols(), HP.n_vocab);
    let tokens: [u32; 7] = [1, 17, 42, 5, 63, 0, 29];
    let other: [u32; 3] = [7, 7, 50];
    // Sequence A: prompt of 5 (all logits) batched with sequence B (last logit), then two
    // decode steps of A. Block tables are scattered and disjoint on purpose.
    let table_a = [5u32, 2, 7, 0];
    let table_b = [1u32, 3];
    let out1 = exec
        .forward(&[
            SeqChunk { tokens: &tokens[..5], pos_start: 0, block_table: &table_a, group_tables: &[], logits: Logits::All },
            SeqChunk { tokens: &other, pos_start: 0, block_table: &table_b, group_tables: &[], logits: Logits::Last },
        ])
        .expect("prefill")
        .to_vec();
    assert_eq!(out1.len(), 6 * HP.n_vocab);
    let out2 = exec
        .forward(&[SeqChunk { tokens: &tokens[5..6], pos_start: 5, block_table: &table_a, group_tables: &[], logits: Logits::Last }])
        .expect("decode 1")
        .to_vec();
    let out3 = exec
        .forward(&[SeqChunk { tokens: &tokens[6..7], pos_start: 6, block_table: &table_a, group_tables: &[], logits: Logits::Last }])
        .expect("decode 2")
        .to_vec();

    let want_a = reference_logits(&HP, &ts, &tokens, false);
    let want_b = reference_logits(&HP, &ts, &other, false);
    let v = HP.n_vocab;
    let rows: Vec<(&str, &[f32], &[f64])> = vec![
        ("A pos 0", &out1[0..v], &want_a[0]),
        ("A pos 1", &out1[v..2 * v], &want_a[1]),
        ("A pos 2", &out1[2 * v..3 * v], &want_a[2]),
        ("A pos 3", &out1[3 * v..4 * v], &want_a[3]),
        ("A pos 4", &out1[4 * v..5 * v], &want_a[4]),
        ("B pos 2", &out1[5 * v..6 * v], &want_b[2]),
        ("A pos 5", &out2[..], &want_a[5]),
        ("A pos 6", &out3[..], &want_a[6]),
    ];
    let scale = want_a.iter().chain(&want_b).flatten().fold(1.0f64, |m, x| m.max(x.abs()));
    let bound = 2e-3 * scale;
    let mut worst = 0.0f64;
    for (what, got, want) in &rows {
        let d = max_abs_diff(got, want);
        assert!(d <= bound, "{what}: max |logit - f64 reference| = {d:.3e} > bound {bound:.3e}");
        worst = worst.max(d);
    }
    eprintln!("tinyc (C plugin) vs f64 reference: max abs error {worst:.3e} (bound {bound:.3e}, max |logit| {scale:.3})");

    // The comparison can fail: the same model with NeoX-style RoPE differs by far more.
    let neox = reference_logits(&HP, &ts, &tokens, true);
    let d_neox = max_abs_diff(&out3, &neox[6]);
    assert!(d_neox > 10.0 * bound, "NeoX reference should not match: {d_neox:.3e} vs bound {bound:.3e}");
}

#[test]
fn c_plugin_scalar_head_count_kv_and_untied_output() {
    // head_count_kv as one integer and a separate output.weight: the other branches of tiny.c.
    let reg = load_good_registry();
    let mut ts = random_tensors(&HP, 99);
    let mut rng = Rng(5);
    ts.push(T {
        name: "output.weight".into(),
        dims: vec![HP.n_embd, HP.n_vocab],
        data: (0..HP.n_embd * HP.n_vocab).map(|_| rng.uniform()).collect(),
    });
    let mut meta = metadata(&HP, "tinyc");
    for (k, v) in meta.iter_mut() {
        if k.ends_with("head_count_kv") {
            *v = GgufValue::U32(HP.n_head_kv as u32);
        }
    }
    let model = model_file("untied", &meta, &ts);
    let graph = build(&reg, &model).expect("graph");
    let lm = graph.nodes.iter().filter(|n| n.name == "output.weight").count();
    assert_eq!(lm, 1, "the plugin must use output.weight when the model has it");
    let src = ModelSource::open(&model, &reg).expect("open");
    let mut exec = Executor::new(graph, &src, KvConfig { block_size: 4, n_blocks: 2 }).expect("executor");
    let tokens = [3u32, 60, 12];
    let got = exec
        .forward(&[SeqChunk { tokens: &tokens, pos_start: 0, block_table: &[1, 0], group_tables: &[], logits: Logits::Last }])
        .expect("forward");
    let want = reference_logits(&HP, &ts, &tokens, false);
    let want = &want[tokens.len() - 1];
    let bound = 2e-3 * want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let d = max_abs_diff(&got, want);
    assert!(d <= bound, "untied head: max abs error {d:.3e} > bound {bound:.3e}");
}

// ---------------------------------------------------------------------------------------------
// Load failures: each names the file; the registry keeps every other plugin.
// ---------------------------------------------------------------------------------------------

fn load_err(path: &Path) -> String {
    match rocmforge_runtime::Plugin::load(path) {
        Ok(p) => panic!("{} loaded as plugin '{}' but must be refused", path.display(), p.name),
        Err(e @ RuntimeError::Plugin { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
            msg
        }
        Err(e) => panic!("expected RuntimeError::Plugin, got {e:?}"),
    }
}

#[test]
fn missing_entry_symbol_is_refused() {
    let msg = load_err(&plugins().no_entry);
    assert!(msg.contains("rocmforge_plugin_v1"), "{msg}");
}

#[test]
fn abi_version_mismatch_names_both_versions() {
    let msg = load_err(&plugins().abi99);
    assert!(msg.contains("99") && msg.contains(&rocmforge_abi::ABI_VERSION.to_string()), "{msg}");
    assert!(msg.contains("plugin ABI version 99, this host speaks version 1"), "{msg}");
}

#[test]
fn too_short_plugin_table_is_refused() {
    let msg = load_err(&plugins().short_table);
    // The first version of the table ends at `build`; later fields are appended (meta_claims).
    let need = std::mem::offset_of!(rocmforge_abi::RfPluginV1, meta_claims);
    assert!(msg.contains(&format!("plugin table is 8 bytes, version 1 needs {need}")), "{msg}");
}

#[test]
fn null_build_function_is_refused_at_load() {
    // Before the host checked it, this plugin loaded and the host jumped to address 0 on build.
    let msg = load_err(&plugins().null_build);
    assert!(msg.contains("build function is null"), "{msg}");
}

#[test]
fn file_that_is_not_a_library_is_refused() {
    let path = plugins().work.join("librocmforge_plugin_garbage.so");
    std::fs::write(&path, b"this is not an ELF file").expect("write garbage");
    let msg = load_err(&path);
    assert!(msg.contains("cannot load"), "{msg}");
}

#[test]
fn directory_with_good_and_bad_plugins_keeps_the_good_one() {
    let p = plugins();
    let reg = Registry::from_paths(std::slice::from_ref(&p.mixed_dir));
    let names: Vec<&str> = reg.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["tinyc"]);
    let mut failed: Vec<String> = reg.failures.iter().map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    failed.sort();
    assert_eq!(failed, vec!["broken.rfplugin.so".to_string(), "librocmforge_plugin_zz_abi99.so".to_string()]);
    for f in &reg.failures {
        assert!(f.error.contains(&f.path.display().to_string()), "failure does not name its file: {}", f.error);
    }
    // The surviving plugin serves models as if nothing had failed.
    let (model, _) = good_model();
    let src = ModelSource::open(&model, &reg).expect("open");
    let graph = build_graph(reg.for_gguf_arch("tinyc").expect("tinyc"), &src).expect("graph from the surviving plugin");
    let mut exec = Executor::new(graph, &src, KvConfig { block_size: 4, n_blocks: 1 }).expect("executor");
    let out = exec
        .forward(&[SeqChunk { tokens: &[1, 2], pos_start: 0, block_table: &[0], group_tables: &[], logits: Logits::Last }])
        .expect("forward");
    assert!(out.len() == HP.n_vocab && out.iter().all(|x| x.is_finite()));
}

// ---------------------------------------------------------------------------------------------
// Build failures.
// ---------------------------------------------------------------------------------------------

#[test]
fn build_error_via_set_error_surfaces_in_plugin_build() {
    let p = plugins();
    let reg = Registry::from_paths(std::slice::from_ref(&p.fail_build));
    assert!(reg.failures.is_empty(), "{:?}", reg.failures);
    let (model, _) = good_model();
    match build(&reg, &model) {
        Err(e @ RuntimeError::PluginBuild { .. }) => {
            let RuntimeError::PluginBuild { plugin, path, arch, what } = &e else { unreachable!() };
            assert_eq!((plugin.as_str(), arch.as_str()), ("tinyc", "tinyc"));
            assert_eq!(path, &p.fail_build);
            assert_eq!(what, "tinyc: refusing to build 'tinyc' (built with TINYC_FAIL_BUILD)");
            let msg = e.to_string();
            assert!(msg.contains(&p.fail_build.display().to_string()) && msg.contains(what.as_str()), "{msg}");
        }
        other => panic!("expected PluginBuild, got {other:?}"),
    }
}

#[test]
fn shape_error_names_the_node() {
    let reg = load_good_registry();
    let mut ts = random_tensors(&HP, 1);
    let q = ts.iter_mut().find(|t| t.name == "blk.0.attn_q.weight").expect("attn_q");
    q.dims = vec![HP.n_embd / 2, 2 * HP.n_head * HP.head_dim()]; // same element count, wrong k
    let model = model_file("bad_shape", &metadata(&HP, "tinyc"), &ts);
    match build(&reg, &model) {
        Err(RuntimeError::Graph { node, what }) => {
            assert_eq!(node, "blk.0.attn_q");
            assert!(what.contains("blk.0.attn_q.weight") && what.contains(&HP.n_embd.to_string()), "{what}");
        }
        other => panic!("expected a Graph error, got {other:?}"),
    }
}

#[test]
fn missing_tensor_names_tensor_and_architecture() {
    let reg = load_good_registry();
    let ts: Vec<T> = random_tensors(&HP, 2).into_iter().filter(|t| t.name != "blk.1.ffn_up.weight").collect();
    let model = model_file("missing_tensor", &metadata(&HP, "tinyc"), &ts);
    match build(&reg, &model) {
        Err(e @ RuntimeError::MissingTensorOfArch { .. }) => {
            let msg = e.to_string();
            let RuntimeError::MissingTensorOfArch { name, arch } = e else { unreachable!() };
            assert_eq!((name.as_str(), arch.as_str()), ("blk.1.ffn_up.weight", "tinyc"));
            assert_eq!(msg, "missing tensor 'blk.1.ffn_up.weight' required by architecture 'tinyc'");
        }
        other => panic!("expected MissingTensorOfArch, got {other:?}"),
    }
}

#[test]
fn unknown_architecture_lists_available_ones() {
    let reg = load_good_registry();
    let ts = random_tensors(&HP, 3);
    let model = model_file("unknown_arch", &metadata(&HP, "mystery"), &ts);
    match build(&reg, &model) {
        Err(e @ RuntimeError::UnknownArch { .. }) => {
            let msg = e.to_string();
            let RuntimeError::UnknownArch { arch, available } = e else { unreachable!() };
            assert_eq!(arch, "mystery");
            assert_eq!(available, vec!["TinyCForCausalLM".to_string(), "tinyc".to_string()]);
            assert!(msg.contains("mystery") && msg.contains("TinyCForCausalLM, tinyc"), "{msg}");
        }
        other => panic!("expected UnknownArch, got {other:?}"),
    }
}

#[test]
fn undefined_rope_mode_is_a_graph_error() {
    // Mode 1 is not an ABI value; it must not silently run as interleaved RoPE.
    let reg = Registry::from_paths(&[plugins().rope_mode1.clone()]);
    assert!(reg.failures.is_empty(), "{:?}", reg.failures);
    let (model, _) = good_model();
    match build(&reg, &model) {
        Err(RuntimeError::Graph { node, what }) => {
            assert_eq!(node, "blk.0.attn_q_rope");
            assert!(what.contains("ROPE iparams[3] (rope mode) = 1 is not supported by this host"), "{what}");
        }
        Err(e) => panic!("expected a Graph error, got {e:?}"),
        Ok(g) => panic!("the graph was accepted ({} nodes)", g.nodes.len()),
    }
}

#[test]
fn plugin_side_metadata_errors_surface_with_their_message() {
    let reg = load_good_registry();
    let ts = random_tensors(&HP, 4);
    let kv = "tinyc.attention.head_count_kv";
    let u32s = |v: Vec<u32>| Some(GgufValue::Array(GgufArray::U32(v)));
    // (case, metadata key, new value or None to remove it, message the C plugin gives)
    let cases: Vec<(&str, &str, Option<GgufValue>, &str)> = vec![
        ("no_block_count", "tinyc.block_count", None, "tinyc: missing metadata key 'tinyc.block_count'"),
        ("kv_array_len", kv, u32s(vec![2, 2, 2]), "tinyc: 'tinyc.attention.head_count_kv' has 3 entries, block_count is 2"),
        (
            // An empty array: the plugin asks its length with a NULL buffer of capacity 0.
            "kv_array_empty",
            kv,
            u32s(vec![]),
            "tinyc: 'tinyc.attention.head_count_kv' has 0 entries, block_count is 2",
        ),
        (
            "kv_string",
            kv,
            Some(GgufValue::Str("two".into())),
            "tinyc: 'tinyc.attention.head_count_kv' is neither an integer nor a numeric array (status 3)",
        ),
        (
            "n_ff_mismatch",
            "tinyc.feed_forward_length",
            Some(GgufValue::U32(40)),
            "tinyc: blk.0.ffn_up.weight has 48 rows but feed_forward_length is 40",
        ),
    ];
    for (name, key, value, want) in cases {
        let mut meta = metadata(&HP, "tinyc");
        meta.retain(|(k, _)| k != key);
        if let Some(v) = value {
            meta.push((key.to_string(), v));
        }
        let model = model_file(name, &meta, &ts);
        match build(&reg, &model) {
            Err(RuntimeError::PluginBuild { what, .. }) => assert_eq!(what, want, "case {name}"),
            other => panic!("case {name}: expected PluginBuild, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ABI v1 hardening: unknown slots, bad pointers, concurrent builds.
// ---------------------------------------------------------------------------------------------

#[test]
fn op_setting_a_slot_the_host_does_not_read_is_refused_by_name() {
    // A plugin built for a newer host (say, with a chunked-attention size in ATTENTION's last
    // free integer slot) must fail here instead of silently computing full attention.
    let reg = Registry::from_paths(&[plugins().attn_slot7.clone()]);
    assert!(reg.failures.is_empty(), "{:?}", reg.failures);
    let (model, _) = good_model();
    match build(&reg, &model) {
        Err(e @ RuntimeError::Graph { .. }) => {
            let msg = e.to_string();
            let RuntimeError::Graph { node, what } = e else { unreachable!() };
            assert_eq!(node, "blk.0.attn");
            assert!(what.starts_with("ATTENTION iparams[7] = 4096: this host does not read it for this op"), "{what}");
            assert!(msg.contains("blk.0.attn") && msg.contains("unused slots must be 0"), "{msg}");
        }
        Err(e) => panic!("expected a Graph error, got {e:?}"),
        Ok(g) => panic!("the graph was accepted ({} nodes)", g.nodes.len()),
    }
    // The host keeps running: the good plugin still builds and runs the same model.
    build(&load_good_registry(), &model).expect("good plugin after a refused one");
}

#[test]
fn null_out_pointer_is_an_error_naming_plugin_callback_and_argument() {
    let p = plugins();
    let reg = Registry::from_paths(std::slice::from_ref(&p.null_out));
    let (model, _) = good_model();
    match build(&reg, &model) {
        Err(e @ RuntimeError::PluginCallback { .. }) => {
            let msg = e.to_string();
            let RuntimeError::PluginCallback { plugin, path, callback, what } = e else { unreachable!() };
            assert_eq!((plugin.as_str(), callback, what.as_str()), ("tinyc", "op", "`out` is a null pointer"));
            assert_eq!(path, p.null_out);
            assert!(msg.contains(&p.null_out.display().to_string()), "{msg}");
        }
        other => panic!("expected PluginCallback, got {other:?}"),
    }
    build(&load_good_registry(), &model).expect("good plugin after a refused one");
}

#[test]
fn concurrent_builds_of_several_models_from_threads() {
    // The model manager may load several models at once: builds of the same plugin run on
    // several threads, each with its own context. Models of 1, 2 and 3 layers are built 8 times
    // each from 6 threads at once; every graph must have exactly its own model's node count
    // (a context shared between builds would mix nodes of different models).
    let reg = load_good_registry();
    let models: Vec<(usize, PathBuf)> = (1..=3)
        .map(|n_layer| {
            let hp = Hp { n_layer, ..HP };
            (n_layer, model_file(&format!("threads_{n_layer}"), &metadata(&hp, "tinyc"), &random_tensors(&hp, n_layer as u64)))
        })
        .collect();
    let srcs: Vec<(usize, ModelSource)> = models.iter().map(|(n, p)| (*n, ModelSource::open(p, &reg).expect("open"))).collect();
    let plugin = reg.for_gguf_arch("tinyc").expect("tinyc");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let srcs = &srcs;
                s.spawn(move || {
                    for i in 0..8 {
                        let (n_layer, src) = &srcs[(t + i) % srcs.len()];
                        let g = build_graph(plugin, src).expect("concurrent build");
                        assert_eq!(g.nodes.len(), 2 + 24 * n_layer + 5, "thread {t}, build {i}, {n_layer} layers");
                        assert_eq!(g.layers.len(), *n_layer);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("builder thread");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Precedence, conflicts and `rocmforge plugins check` (rocmforge_runtime::plugin_check).
// ---------------------------------------------------------------------------------------------

#[test]
fn first_plugin_in_search_order_serves_a_contested_architecture() {
    let p = plugins();
    for (order, winner) in [([&p.good, &p.other_name], "tinyc"), ([&p.other_name, &p.good], "tinyc_b")] {
        let reg = Registry::from_paths(&order.map(|f| f.to_path_buf()));
        assert!(reg.failures.is_empty(), "{:?}", reg.failures);
        assert_eq!(reg.for_gguf_arch("tinyc").expect("served").name, winner);
        assert_eq!(reg.for_hf_arch("TinyCForCausalLM").expect("served").0.name, winner);
        let conflicts = reg.conflicts();
        let got: Vec<(&str, bool, Vec<&str>)> = conflicts
            .iter()
            .map(|c| (c.arch.as_str(), c.hf, c.claimants.iter().map(|&i| reg.plugins[i].name.as_str()).collect()))
            .collect();
        let loser = if winner == "tinyc" { "tinyc_b" } else { "tinyc" };
        assert_eq!(got, vec![("TinyCForCausalLM", true, vec![winner, loser]), ("tinyc", false, vec![winner, loser])]);
    }
}

#[test]
fn same_name_later_on_the_search_path_is_shadowed_and_reported() {
    let p = plugins();
    let reg = Registry::from_paths(&[p.good.clone(), p.mixed_dir.clone()]);
    assert_eq!(reg.plugins.len(), 1);
    assert_eq!(reg.shadowed.len(), 1, "{:?}", reg.shadowed);
    assert_eq!(reg.shadowed[0].name, "tinyc");
    assert_eq!(reg.shadowed[0].by, p.good);
    assert!(reg.conflicts().is_empty(), "a shadowed file is not loaded, so it claims nothing");
}

#[test]
fn plugins_check_builds_and_runs_a_synthetic_model_and_reports_conflicts() {
    use rocmforge_runtime::plugin_check;
    let p = plugins();
    let installed = Registry::from_paths(&[p.good.clone(), p.other_name.clone()]);
    let r = plugin_check::check(&p.other_name, &installed, None).expect("check");
    assert_eq!((r.plugin.name.as_str(), r.plugin.abi_version), ("tinyc_b", 1));
    assert_eq!(r.plugin.table_size as usize, std::mem::size_of::<rocmforge_abi::RfPluginV1>());
    assert_eq!(r.builds.len(), 1);
    let b = &r.builds[0];
    let s = b.result.as_ref().expect("synthetic build");
    assert_eq!((b.arch.as_str(), b.model.as_str()), ("tinyc", "synthetic"));
    assert_eq!((s.layers, s.output_cols, s.embedding), (plugin_check::N_LAYER, plugin_check::N_VOCAB, false));
    assert_eq!(s.nodes, 2 + 24 * plugin_check::N_LAYER + 5);
    assert!(r.ok());
    let gguf = r.conflicts.iter().find(|c| !c.hf).expect("gguf conflict");
    assert_eq!((gguf.arch.as_str(), gguf.wins), ("tinyc", Some(false)));
    assert_eq!(gguf.others, vec![("tinyc".to_string(), p.good.clone())]);
    // The same file when it is not on the search path: no verdict, still a conflict.
    let r = plugin_check::check(&p.other_name, &Registry::from_paths(&[p.good.clone()]), None).expect("check");
    assert!(r.conflicts.iter().all(|c| c.wins.is_none()) && r.conflicts.len() == 2, "{:?}", r.conflicts);
}

#[test]
fn plugins_check_with_a_real_model_and_with_a_broken_plugin() {
    use rocmforge_runtime::plugin_check;
    let p = plugins();
    let (model, _) = good_model();
    let r = plugin_check::check(&p.good, &Registry::default(), Some(&model)).expect("check");
    assert!(r.ok(), "{:?}", r.builds);
    assert_eq!(r.builds[0].model, model.display().to_string());
    // A plugin passing a null pointer: the check fails with the callback and argument named.
    let r = plugin_check::check(&p.null_out, &Registry::default(), None).expect("loads");
    assert!(!r.ok());
    let err = r.builds[0].result.as_ref().unwrap_err();
    assert!(err.contains("host callback op: `out` is a null pointer"), "{err}");
    // A plugin setting a slot this host does not read: named in the check too.
    let r = plugin_check::check(&p.attn_slot7, &Registry::default(), None).expect("loads");
    let err = r.builds[0].result.as_ref().unwrap_err();
    assert!(err.contains("graph node 'blk.0.attn': ATTENTION iparams[7] = 4096"), "{err}");
    // Not a plugin at all: an error naming the file.
    match plugin_check::check(&p.no_entry, &Registry::default(), None) {
        Err(e) => assert!(e.to_string().contains("rocmforge_plugin_v1") && e.to_string().contains(&p.no_entry.display().to_string())),
        Ok(r) => panic!("loaded {}", r.plugin.name),
    }
}
