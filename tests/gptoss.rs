//! The gpt-oss plugin (`plugins/gptoss`: GGUF `gpt-oss`, HF `GptOssForCausalLM`) beyond what
//! `tests/hf_tiny.rs` checks (the HF directory and our GGUF conversions against transformers):
//! - `tests/fixtures/gptoss-tiny.llama-cpp.f32.gguf`: the tiny model (`hf-tiny/gptoss`) converted
//!   by llama.cpp's own converter (`scripts/fixtures/gptoss_llama_cpp_gguf.py`): llama.cpp's
//!   tensor names, the experts split from HF's interleaved `gate_up_proj` and transposed, and its
//!   metadata, which has no per-layer sliding-window pattern and no YaRN `truncate`, against
//!   transformers' logits; and that the window, the unrounded YaRN range and the sinks each move
//!   the logits (so the comparison sees them), with prompts longer than the window;
//! - the real gpt-oss-20b layout: a GGUF with its metadata and its whole tensor table (names,
//!   shapes, types: MXFP4 experts, Q8_0 projections) whose data is a sparse hole, so nothing is
//!   stored or read: every tensor is mapped, the graph builds, the CPU backend takes it, and the
//!   GPU backend refuses it by name (so `--device auto` runs it on the CPU);
//! - hostile metadata and configs: errors naming what is wrong, never a panic.
//!
//! Like every test of the binary, these run on the CPU unless `ROCMFORGE_DEVICE` names a GPU.

mod common;

use std::path::{Path, PathBuf};

use common::{registry, repo};
use rocmforge_model::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use rocmforge_quant::GgmlType;
use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::graph::Op;
use rocmforge_runtime::{build_graph, Graph, ModelSource};

/// The bounds of `tests/hf_tiny.rs` for an f32 model (f16 KV cache, f32 math elsewhere).
const MAX_REL_ERR: f64 = 5e-3;
/// A change that matters must move the logits by 10x the bound.
const MIN_MOVED: f64 = 10.0 * MAX_REL_ERR;
const N_CTX: usize = 64;

fn llama_cpp_file() -> PathBuf {
    let p = repo().join("tests/fixtures/gptoss-tiny.llama-cpp.f32.gguf");
    assert!(p.exists(), "{} is missing: it is committed; regenerate with scripts/fixtures/gptoss_llama_cpp_gguf.py", p.display());
    p
}

fn hf_dir() -> PathBuf {
    repo().join("tests/fixtures/hf-tiny/gptoss")
}

/// transformers' sequences and logits for `hf-tiny/gptoss`, and its config.
fn reference() -> (Vec<Vec<u32>>, Vec<f32>, serde_json::Value) {
    let dir = hf_dir();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json")).expect("json");
    let seqs = r["sequences"]
        .as_array()
        .expect("sequences")
        .iter()
        .map(|s| s.as_array().expect("sequence").iter().map(|t| t.as_u64().expect("token") as u32).collect())
        .collect();
    let bytes = std::fs::read(dir.join("logits.f32")).expect("logits.f32");
    let cfg = serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json")).expect("json");
    (seqs, bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(), cfg)
}

fn graph_of(model: &Path) -> Result<(ModelSource, Graph), String> {
    let reg = registry();
    let src = ModelSource::open(model, &reg).map_err(|e| format!("open: {e}"))?;
    let plugin = reg.for_source(&src).map_err(|e| format!("plugin: {e}"))?;
    assert_eq!(plugin.name, "gptoss", "{} is not served by the gptoss plugin", model.display());
    let graph = build_graph(plugin, &src).map_err(|e| format!("graph: {e}"))?;
    Ok((src, graph))
}

fn load(model: &Path) -> Result<Executor, String> {
    let (src, graph) = graph_of(model)?;
    Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: N_CTX / 16 }).map_err(|e| format!("executor: {e}"))
}

/// Relative L2 error over every sequence against `want`, each sequence fed as a prefill of 8
/// tokens and then one token at a time (the KV cache path; the sliding window (8) drops keys).
fn compare_with(model: &Path, want: &[f32]) -> f64 {
    let (seqs, _, _) = reference();
    let mut exec = load(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let n_vocab = exec.n_out_cols();
    let table: Vec<u32> = (0..(N_CTX / 16) as u32).collect();
    let (mut num, mut den) = (0f64, 0f64);
    let mut off = 0;
    for seq in &seqs {
        assert!(seq.len() > 8 + 8, "sequences must outgrow the sliding window after the prefill");
        let mut got = Vec::new();
        let mut feed = |tokens: &[u32], pos: usize| {
            let c = SeqChunk { tokens, pos_start: pos, block_table: &table, group_tables: &[], logits: Logits::All };
            got.extend_from_slice(exec.forward(std::slice::from_ref(&c)).expect("forward"));
        };
        feed(&seq[..8], 0);
        for (i, t) in seq.iter().enumerate().skip(8) {
            feed(std::slice::from_ref(t), i);
        }
        let want = &want[off..off + seq.len() * n_vocab];
        assert_eq!(got.len(), want.len(), "output size differs from the reference");
        for (g, w) in got.iter().zip(want) {
            num += (*g as f64 - *w as f64).powi(2);
            den += (*w as f64).powi(2);
        }
        off += want.len();
    }
    assert_eq!(off, want.len(), "the reference has more sequences than were run");
    (num / den).sqrt()
}

fn compare(model: &Path) -> f64 {
    compare_with(model, &reference().1)
}

/// Rewrite `src` into `dst`: `meta` edits the metadata; `tensors` maps the (name, dims, bytes)
/// list of the source to the tensors written (all f32).
type Tensors = Vec<(String, Vec<u64>, Vec<u8>)>;
fn rewrite(src: &Path, dst: &Path, meta: impl FnOnce(&mut GgufWriter), tensors: impl FnOnce(Tensors) -> Tensors) {
    let f = GgufFile::open(src).expect("open");
    let mut w = GgufWriter::new();
    w.copy_metadata_from(&f);
    meta(&mut w);
    let all: Tensors = f.tensors().iter().map(|t| (t.name.clone(), t.dims.clone(), f.tensor_data(t).to_vec())).collect();
    let out = tensors(all);
    for (name, dims, _) in &out {
        w.add_tensor_info(name.clone(), dims.clone(), GgmlType::F32).expect("tensor info");
    }
    w.write_file(dst, |i| Ok(out[i].2.clone())).expect("write");
}

/// A scratch file, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!("rf-gptoss-{tag}-{}.gguf", std::process::id())))
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The fixture's `layer_types` as the bool array our conversion writes (llama.cpp's does not).
fn layer_pattern() -> GgufValue {
    let (_, _, cfg) = reference();
    let types = cfg["layer_types"].as_array().expect("layer_types");
    GgufValue::Array(GgufArray::Bool(types.iter().map(|t| t == "sliding_attention").collect()))
}

#[test]
fn llama_cpp_conversion_matches_transformers() {
    let path = llama_cpp_file();
    let f = GgufFile::open(&path).expect("open");
    // What llama.cpp writes and what it leaves out (our defaults and our own keys fill in).
    assert_eq!(f.get("general.architecture").and_then(GgufValue::as_str), Some("gpt-oss"));
    assert_eq!(f.get("gpt-oss.attention.sliding_window").and_then(GgufValue::as_u64), Some(8));
    assert!(f.get("gpt-oss.attention.sliding_window_pattern").is_none() && f.get("gpt-oss.rope.scaling.yarn_truncate").is_none());
    for t in ["blk.0.attn_sinks.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.bias", "blk.3.ffn_down_exps.bias"] {
        assert!(f.tensor(t).is_some(), "llama.cpp's file has no {t}");
    }
    // The fixture's local layers (0, 1, 3) are not llama.cpp's period of 2: state them.
    let fixed = Scratch::new("pattern");
    rewrite(&path, &fixed.0, |w| w.set("gpt-oss.attention.sliding_window_pattern", layer_pattern()), |ts| ts);
    let rel = compare(&fixed.0);
    eprintln!("llama.cpp-converted gpt-oss (with the layer pattern): rel. error {rel:.2e}");
    assert!(rel < MAX_REL_ERR, "llama.cpp-converted gpt-oss: rel. error {rel:.2e} (bound {MAX_REL_ERR:.0e})");

    // Each feature the comparison is meant to see moves the logits far past the bound when it is
    // taken away: the sliding window (llama.cpp's default pattern puts it on other layers), the
    // unrounded YaRN range (rounded as llama.cpp does) and the attention sinks (zeroed).
    let zero_sinks = |ts: Tensors| -> Tensors {
        ts.into_iter().map(|(n, d, b)| if n.ends_with("attn_sinks.weight") { (n, d, vec![0; b.len()]) } else { (n, d, b) }).collect()
    };
    let cases: Vec<(&str, Box<dyn FnOnce(&mut GgufWriter)>, Box<dyn FnOnce(Tensors) -> Tensors>)> = vec![
        ("llama.cpp's default layer pattern", Box::new(|_| {}), Box::new(|ts| ts)),
        (
            "YaRN range rounded",
            Box::new(|w: &mut GgufWriter| {
                w.set("gpt-oss.attention.sliding_window_pattern", layer_pattern());
                w.set("gpt-oss.rope.scaling.yarn_truncate", GgufValue::Bool(true));
            }),
            Box::new(|ts| ts),
        ),
        (
            "sinks zeroed",
            Box::new(|w: &mut GgufWriter| w.set("gpt-oss.attention.sliding_window_pattern", layer_pattern())),
            Box::new(zero_sinks),
        ),
    ];
    for (what, meta, tensors) in cases {
        let out = Scratch::new("moved");
        rewrite(&path, &out.0, meta, tensors);
        let rel = compare(&out.0);
        eprintln!("{what}: rel. error {rel:.2e}");
        assert!(rel > MIN_MOVED, "{what}: the logits moved by only {rel:.2e}, so the comparison cannot see it");
    }
}

/// Our own conversion (`rocmforge quantize DIR OUT F32`, as tests/hf_tiny.rs runs it) writes
/// llama.cpp's tensor names and shapes: the same table as llama.cpp's converter.
#[test]
fn our_conversion_has_llama_cpps_tensor_table() {
    let ours = Scratch::new("ours");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .arg("quantize")
        .arg(hf_dir())
        .arg(&ours.0)
        .arg("F32")
        .output()
        .expect("run rocmforge quantize");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let table = |p: &Path| -> Vec<(String, Vec<u64>)> {
        let f = GgufFile::open(p).expect("open");
        let mut v: Vec<_> = f.tensors().iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(table(&ours.0), table(&llama_cpp_file()));
    let f = GgufFile::open(&ours.0).expect("open");
    for key in ["expert_count", "expert_used_count", "expert_feed_forward_length", "attention.sliding_window", "attention.key_length"] {
        let key = format!("gpt-oss.{key}");
        assert_eq!(
            f.get(&key).and_then(GgufValue::as_u64),
            GgufFile::open(llama_cpp_file()).expect("open").get(&key).and_then(GgufValue::as_u64),
            "{key}"
        );
    }
    assert_eq!(f.get("gpt-oss.rope.scaling.yarn_truncate"), Some(&GgufValue::Bool(false)));
}

// ---------------------------------------------------------------------------------------------
// The real gpt-oss-20b tensor table and metadata, without its 12 GB of data.
// ---------------------------------------------------------------------------------------------

/// gpt-oss-20b as llama.cpp's converter writes it (HF `openai/gpt-oss-20b` config.json:
/// 24 layers, hidden 2880, 64 query / 8 KV heads of 64, 32 experts of 2880, 4 used, window 128,
/// θ 150000, YaRN ×32 from 4096, vocab 201088) and as ggml-org's MXFP4 file stores it: experts
/// MXFP4, projections, embeddings and LM head Q8_0, router, norms, biases and sinks F32; 459
/// tensors. The data section is a hole in a sparse file.
fn write_gpt_oss_20b(path: &Path) {
    const N_LAYER: u64 = 24;
    const N_EMBD: u64 = 2880;
    const N_HEAD: u64 = 64;
    const N_HEAD_KV: u64 = 8;
    const HEAD_DIM: u64 = 64;
    const N_EXPERT: u64 = 32;
    const N_FF: u64 = 2880;
    const N_VOCAB: u64 = 201088;
    let mut w = GgufWriter::new();
    let arch = |k: &str| format!("gpt-oss.{k}");
    w.set("general.architecture", GgufValue::Str("gpt-oss".into()));
    w.set("general.name", GgufValue::Str("Gpt Oss 20b".into()));
    for (k, v) in [
        ("block_count", N_LAYER),
        ("context_length", 131072),
        ("embedding_length", N_EMBD),
        ("feed_forward_length", N_FF),
        ("attention.head_count", N_HEAD),
        ("attention.head_count_kv", N_HEAD_KV),
        ("attention.key_length", HEAD_DIM),
        ("attention.value_length", HEAD_DIM),
        ("expert_count", N_EXPERT),
        ("expert_used_count", 4),
        ("attention.sliding_window", 128),
        ("expert_feed_forward_length", N_FF),
        ("rope.scaling.original_context_length", 4096),
    ] {
        w.set(arch(k), GgufValue::U32(v as u32));
    }
    for (k, v) in [
        ("rope.freq_base", 150000.0),
        ("attention.layer_norm_rms_epsilon", 1e-5),
        ("rope.scaling.factor", 32.0),
        ("rope.scaling.yarn_beta_fast", 32.0),
        ("rope.scaling.yarn_beta_slow", 1.0),
    ] {
        w.set(arch(k), GgufValue::F32(v));
    }
    w.set(arch("rope.scaling.type"), GgufValue::Str("yarn".into()));
    let mut add = |name: String, dims: Vec<u64>, ty: GgmlType| {
        w.add_tensor_info(name, dims, ty).expect("tensor info");
    };
    add("token_embd.weight".into(), vec![N_EMBD, N_VOCAB], GgmlType::Q8_0);
    add("output_norm.weight".into(), vec![N_EMBD], GgmlType::F32);
    add("output.weight".into(), vec![N_EMBD, N_VOCAB], GgmlType::Q8_0);
    let (n_q, n_kv) = (N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM);
    for il in 0..N_LAYER {
        let t = |s: &str| format!("blk.{il}.{s}");
        add(t("attn_norm.weight"), vec![N_EMBD], GgmlType::F32);
        add(t("post_attention_norm.weight"), vec![N_EMBD], GgmlType::F32);
        for (p, n) in [("attn_q", n_q), ("attn_k", n_kv), ("attn_v", n_kv)] {
            add(t(&format!("{p}.weight")), vec![N_EMBD, n], GgmlType::Q8_0);
            add(t(&format!("{p}.bias")), vec![n], GgmlType::F32);
        }
        add(t("attn_output.weight"), vec![n_q, N_EMBD], GgmlType::Q8_0);
        add(t("attn_output.bias"), vec![N_EMBD], GgmlType::F32);
        add(t("attn_sinks.weight"), vec![N_HEAD], GgmlType::F32);
        add(t("ffn_gate_inp.weight"), vec![N_EMBD, N_EXPERT], GgmlType::F32);
        add(t("ffn_gate_inp.bias"), vec![N_EXPERT], GgmlType::F32);
        add(t("ffn_gate_exps.weight"), vec![N_EMBD, N_FF, N_EXPERT], GgmlType::MXFP4);
        add(t("ffn_up_exps.weight"), vec![N_EMBD, N_FF, N_EXPERT], GgmlType::MXFP4);
        add(t("ffn_down_exps.weight"), vec![N_FF, N_EMBD, N_EXPERT], GgmlType::MXFP4);
        add(t("ffn_gate_exps.bias"), vec![N_FF, N_EXPERT], GgmlType::F32);
        add(t("ffn_up_exps.bias"), vec![N_FF, N_EXPERT], GgmlType::F32);
        add(t("ffn_down_exps.bias"), vec![N_EMBD, N_EXPERT], GgmlType::F32);
    }
    assert_eq!(w.n_tensors(), 459, "ggml-org/gpt-oss-20b-GGUF has 459 tensors");
    let infos = w.tensor_infos().expect("infos");
    let last = infos.last().expect("tensors");
    let mut header = Vec::new();
    w.write_header(&mut header).expect("header");
    let file = std::fs::File::create(path).expect("create");
    std::io::Write::write_all(&mut &file, &header).expect("write header");
    // The data section as a hole: the file has its full length, with nothing stored.
    file.set_len(header.len() as u64 + last.offset + last.n_bytes).expect("set_len");
}

#[test]
fn real_gpt_oss_20b_table_maps_every_tensor_and_builds() {
    let path = Scratch::new("20b");
    write_gpt_oss_20b(&path.0);
    let f = GgufFile::open(&path.0).expect("the sparse file is a valid GGUF");
    assert!(f.data_offset() + f.tensors().iter().map(|t| t.n_bytes).sum::<u64>() > 12_000_000_000, "the real model's size");
    let (src, graph) = graph_of(&path.0).unwrap_or_else(|e| panic!("{e}"));

    // Every tensor of the file is read by the graph, and nothing else is.
    let mut read: Vec<&str> =
        graph.nodes.iter().filter_map(|n| if let Op::Weight { tensor } = &n.op { Some(tensor.as_str()) } else { None }).collect();
    read.sort();
    let mut all: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    all.sort();
    assert_eq!(read, all, "the graph must read exactly the file's tensors");

    // The architecture as built: 24 attention layers alternating window 128 and full, sinks on
    // every layer, NeoX YaRN ×32 from 4096 with the unrounded range, 4 of 32 experts with the
    // clamped SwiGLU and biases, the router's bias.
    let attn: Vec<_> =
        graph.nodes.iter().filter_map(|n| if let Op::Attention { p, .. } = &n.op { Some(p.clone()) } else { None }).collect();
    assert_eq!(attn.len(), 24);
    for p in &attn {
        assert_eq!((p.n_head, p.n_head_kv, p.head_dim_k), (64, 8, 64));
        assert_eq!(p.sliding_window, if p.layer % 2 == 0 { 128 } else { 0 }, "layer {}", p.layer);
        assert!(p.sinks.is_some(), "layer {} has no sinks", p.layer);
    }
    let ropes: Vec<_> = graph.nodes.iter().filter_map(|n| if let Op::Rope { p, .. } = &n.op { Some(p.clone()) } else { None }).collect();
    assert_eq!(ropes.len(), 48);
    for p in &ropes {
        assert!(p.neox && p.yarn_exact && p.ext_factor == 1.0 && p.n_ctx_orig == 4096 && p.n_rot == 64);
        assert_eq!((p.freq_base, p.freq_scale, p.beta_fast, p.beta_slow), (150000.0, 1.0 / 32.0, 32.0, 1.0));
    }
    let (mut gate_ups, mut downs, mut routes) = (0, 0, 0);
    for n in &graph.nodes {
        match &n.op {
            Op::MoeGateUp { k, n_ff, gate_b, up_b, act, .. } => {
                gate_ups += 1;
                assert_eq!((*k, *n_ff), (4, 2880));
                assert!(gate_b.is_some() && up_b.is_some());
                assert_eq!(*act, rocmforge_runtime::graph::MoeAct::SwiGluOai { alpha: 1.702, limit: 7.0 });
            }
            Op::MoeDown { bias, .. } => {
                downs += 1;
                assert!(bias.is_some());
            }
            Op::MoeRoute { n_expert, k, .. } => {
                routes += 1;
                assert_eq!((*n_expert, *k), (32, 4));
            }
            Op::MatMul { w, bias, .. } if graph.nodes[*w].name.ends_with("ffn_gate_inp.weight") => assert!(bias.is_some()),
            _ => {}
        }
    }
    assert_eq!((gate_ups, downs, routes), (24, 24, 24));

    // The CPU backend takes it (types, KV geometry) without touching the data; the GPU backend
    // refuses it by name, so `--device auto` runs it on the CPU.
    let refused = rocmforge_runtime::backend::gpu::unsupported_op(&graph).expect("the GPU must refuse gpt-oss");
    eprintln!("GPU: {refused}");
    Executor::with_device(graph, &src, KvConfig { block_size: 16, n_blocks: 4 }, 8, rocmforge_runtime::exec::Device::Cpu)
        .unwrap_or_else(|e| panic!("CPU executor: {e}"));
}

/// A graph without gpt-oss's ops keeps the GPU: the refusal names only what the GPU lacks.
#[test]
fn gpu_refusal_is_specific_to_what_it_lacks() {
    let (_, graph) = graph_of(&hf_dir()).expect("gpt-oss");
    let e = rocmforge_runtime::backend::gpu::unsupported_op(&graph).expect("refused").to_string();
    assert!(e.contains("GPU") && (e.contains("ROPE") || e.contains("ATTENTION") || e.contains("MOE")), "{e}");
    let reg = registry();
    let glm4 = repo().join("tests/fixtures/hf-tiny/glm4");
    let src = ModelSource::open(&glm4, &reg).expect("glm4");
    let g = build_graph(reg.for_source(&src).expect("plugin"), &src).expect("graph");
    assert!(rocmforge_runtime::backend::gpu::unsupported_op(&g).is_none(), "glm4 has nothing the GPU lacks");
}

// ---------------------------------------------------------------------------------------------
// Hostile input.
// ---------------------------------------------------------------------------------------------

/// Each broken GGUF variant is refused, the message names what is wrong, and nothing panics.
#[test]
fn bad_gguf_input_is_refused_by_name() {
    let src = llama_cpp_file();
    let set = |k: &'static str, v: GgufValue| move |w: &mut GgufWriter| w.set(k, v);
    let keep = |ts: Tensors| ts;
    type Case = (&'static str, Box<dyn FnOnce(&mut GgufWriter)>, Box<dyn FnOnce(Tensors) -> Tensors>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "missing-sinks",
            Box::new(|_| {}),
            Box::new(|ts: Tensors| ts.into_iter().filter(|t| t.0 != "blk.2.attn_sinks.weight").collect()),
            "blk.2.attn_sinks.weight",
        ),
        (
            "short-sinks",
            Box::new(|_| {}),
            Box::new(|ts: Tensors| {
                ts.into_iter()
                    .map(|(n, d, b)| if n == "blk.1.attn_sinks.weight" { (n, vec![3], b[..12].to_vec()) } else { (n, d, b) })
                    .collect()
            }),
            "attention sinks",
        ),
        (
            "expert-bias-shape",
            Box::new(|_| {}),
            Box::new(|ts: Tensors| {
                ts.into_iter()
                    .map(|(n, d, b)| if n == "blk.0.ffn_up_exps.bias" { (n, vec![d[0] / 2, d[1] * 2], b) } else { (n, d, b) })
                    .collect()
            }),
            "up_exps bias",
        ),
        ("no-experts-used", Box::new(set("gpt-oss.expert_used_count", GgufValue::U32(0))), Box::new(keep), "expert_used_count"),
        ("too-many-experts-used", Box::new(set("gpt-oss.expert_used_count", GgufValue::U32(5))), Box::new(keep), "expert_used_count"),
        ("zero-heads", Box::new(set("gpt-oss.attention.head_count", GgufValue::U32(0))), Box::new(keep), "head_count"),
        ("huge-heads", Box::new(set("gpt-oss.attention.head_count", GgufValue::U64(1 << 62))), Box::new(keep), "head_count"),
        ("huge-head-dim", Box::new(set("gpt-oss.attention.key_length", GgufValue::U64(u64::MAX / 2))), Box::new(keep), "key_length"),
        ("zero-head-dim", Box::new(set("gpt-oss.attention.key_length", GgufValue::U32(0))), Box::new(keep), "key_length"),
        ("odd-rot-dims", Box::new(set("gpt-oss.rope.dimension_count", GgufValue::U32(7))), Box::new(keep), "rope.dimension_count"),
        ("huge-layer-count", Box::new(set("gpt-oss.block_count", GgufValue::U64(1 << 40))), Box::new(keep), "blk.4."),
        (
            "pattern-length",
            Box::new(set("gpt-oss.attention.sliding_window_pattern", GgufValue::Array(GgufArray::Bool(vec![true; 3])))),
            Box::new(keep),
            "sliding_window_pattern",
        ),
        ("unknown-rope-scaling", Box::new(set("gpt-oss.rope.scaling.type", GgufValue::Str("su-per".into()))), Box::new(keep), "su-per"),
        (
            "no-eps",
            Box::new(|w: &mut GgufWriter| drop(w.remove("gpt-oss.attention.layer_norm_rms_epsilon"))),
            Box::new(keep),
            "layer_norm_rms_epsilon",
        ),
    ];
    for (tag, meta, tensors, needle) in cases {
        let out = Scratch::new(tag);
        rewrite(&src, &out.0, meta, tensors);
        match load(&out.0) {
            Ok(_) => panic!("{tag}: loaded, but must be refused"),
            Err(e) => {
                eprintln!("{tag}: {e}");
                assert!(!e.contains("panicked"), "{tag}: {e}");
                assert!(e.contains(needle), "{tag}: the error does not name '{needle}': {e}");
            }
        }
    }
}

/// Hostile `config.json` values next to the fixture's weights: errors naming the problem, never
/// a panic or a runaway allocation.
#[test]
fn hostile_hf_configs_are_refused_by_name() {
    let (_, _, cfg) = reference();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("num_local_experts", serde_json::json!(0), "expert_used_count"),
        ("num_experts_per_tok", serde_json::json!(0), "expert_used_count"),
        ("num_experts_per_tok", serde_json::json!(1u64 << 40), "expert_used_count"),
        ("head_dim", serde_json::json!(i64::MAX), "key_length"),
        ("head_dim", serde_json::json!(0), "key_length"),
        ("num_attention_heads", serde_json::json!(0), "head_count"),
        ("num_key_value_heads", serde_json::json!(3), "head_count_kv"),
        ("num_hidden_layers", serde_json::json!(1u64 << 40), "num_hidden_layers"),
        ("layer_types", serde_json::json!(["sliding_attention"]), "sliding_window_pattern"),
        ("sliding_window", serde_json::json!(-1), "sliding_window"),
    ];
    for (key, value, needle) in cases {
        let mut c = cfg.clone();
        c[key] = value.clone();
        let d = std::env::temp_dir().join(format!("rf-gptoss-hostile-{}-{key}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        std::fs::copy(hf_dir().join("model.safetensors"), d.join("model.safetensors")).expect("weights");
        std::fs::write(d.join("config.json"), serde_json::to_vec(&c).expect("json")).expect("config");
        let err = match graph_of(&d) {
            Ok(_) => panic!("{key} = {value}: loaded, but must be refused"),
            Err(e) => e,
        };
        let _ = std::fs::remove_dir_all(&d);
        eprintln!("{key} = {value}: {err}");
        assert!(!err.contains("panicked"), "{key} = {value}: {err}");
        assert!(err.contains(needle), "{key} = {value}: the error does not name '{needle}': {err}");
    }
}
