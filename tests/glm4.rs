//! The GLM-4 plugin (`plugins/glm4`: GGUF `glm4`, HF `Glm4ForCausalLM`) on files written by
//! llama.cpp's converter, and its errors on bad input.
//!
//! `tests/hf_tiny.rs` checks the HF directory and our own GGUF conversions against transformers;
//! this file checks what only a llama.cpp file has:
//! - `tests/fixtures/glm4-tiny.llama-cpp.f32.gguf`: the same tiny model (`hf-tiny/glm4`)
//!   converted by llama.cpp's `convert_hf_to_gguf.py` (`scripts/fixtures/glm4_llama_cpp_gguf.py`,
//!   llama-cpp-python 0.3.36's llama.cpp, `--outtype f32`): llama.cpp's tensor names and metadata
//!   keys (`glm4.rope.dimension_count` = 18 instead of our partial factor), against
//!   transformers' logits (`hf-tiny/glm4/logits.f32`);
//! - the same file with Q/K/V fused into `attn_qkv` (+ bias), the other layout llama.cpp's
//!   `create_tensor_qkv` accepts for `glm4`, rewritten here;
//! - variants that must be refused with a message naming what is wrong: a missing tensor, a
//!   gate|up weight of the wrong shape, an unknown RoPE scaling type, GLM-4V's M-RoPE sections.
//!
//! Like every test of the binary, these run on the CPU unless `ROCMFORGE_DEVICE` names a GPU
//! (`ROCMFORGE_DEVICE=cuda:0` on an H100, 2026-12-07: rel. error 1.2e-3, max |logit diff| 7.3e-3,
//! inside the same bound; the CPU gives 5.9e-4 / 4.2e-3).

mod common;

use std::path::{Path, PathBuf};

use common::{registry, repo};
use rocmforge_model::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, ModelSource};

/// The bounds of `tests/hf_tiny.rs` for an f32 model (f16 KV cache, f32 math elsewhere).
const MAX_REL_ERR: f64 = 5e-3;
const N_CTX: usize = 64;

fn llama_cpp_file() -> PathBuf {
    let p = repo().join("tests/fixtures/glm4-tiny.llama-cpp.f32.gguf");
    assert!(p.exists(), "{} is missing: it is committed; regenerate with scripts/fixtures/glm4_llama_cpp_gguf.py", p.display());
    p
}

/// transformers' sequences and logits for `hf-tiny/glm4`.
fn reference() -> (Vec<Vec<u32>>, Vec<f32>) {
    let dir = repo().join("tests/fixtures/hf-tiny/glm4");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json")).expect("json");
    let seqs = r["sequences"]
        .as_array()
        .expect("sequences")
        .iter()
        .map(|s| s.as_array().expect("sequence").iter().map(|t| t.as_u64().expect("token") as u32).collect())
        .collect();
    let bytes = std::fs::read(dir.join("logits.f32")).expect("logits.f32");
    (seqs, bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn load(model: &Path) -> Result<Executor, String> {
    let reg = registry();
    let src = ModelSource::open(model, &reg).map_err(|e| format!("open: {e}"))?;
    let plugin = reg.for_source(&src).map_err(|e| format!("plugin: {e}"))?;
    assert_eq!(plugin.name, "glm4", "{} is not served by the glm4 plugin", model.display());
    let graph = build_graph(plugin, &src).map_err(|e| format!("graph: {e}"))?;
    Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: N_CTX / 16 }).map_err(|e| format!("executor: {e}"))
}

/// (relative L2 error, max |logit difference|, max |logit|) of every sequence, each fed as a prefill
/// of 8 tokens and then one token at a time (the KV cache path), against transformers.
fn compare(model: &Path) -> (f64, f64, f64) {
    let (seqs, want) = reference();
    let mut exec = load(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let n_vocab = exec.n_out_cols();
    let table: Vec<u32> = (0..(N_CTX / 16) as u32).collect();
    let (mut num, mut den, mut max_diff, mut max_ref) = (0f64, 0f64, 0f64, 0f64);
    let mut off = 0;
    for seq in &seqs {
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
            let (g, w) = (*g as f64, *w as f64);
            num += (g - w).powi(2);
            den += w.powi(2);
            max_diff = max_diff.max((g - w).abs());
            max_ref = max_ref.max(w.abs());
        }
        off += want.len();
    }
    assert_eq!(off, want.len(), "the reference has more sequences than were run");
    ((num / den).sqrt(), max_diff, max_ref)
}

/// Rewrite `src` into `dst`: `meta` edits the metadata; `tensors` maps the (name, dims, bytes)
/// list of the source to the tensors written.
type Tensors = Vec<(String, Vec<u64>, Vec<u8>)>;
fn rewrite(src: &Path, dst: &Path, meta: impl FnOnce(&mut GgufWriter), tensors: impl FnOnce(Tensors) -> Tensors) {
    let f = GgufFile::open(src).expect("open");
    let mut w = GgufWriter::new();
    w.copy_metadata_from(&f);
    meta(&mut w);
    let all: Tensors = f.tensors().iter().map(|t| (t.name.clone(), t.dims.clone(), f.tensor_data(t).to_vec())).collect();
    let out = tensors(all);
    for (name, dims, _) in &out {
        w.add_tensor_info(name.clone(), dims.clone(), rocmforge_quant::GgmlType::F32).expect("tensor info");
    }
    w.write_file(dst, |i| Ok(out[i].2.clone())).expect("write");
}

/// A scratch file, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!("rf-glm4-{tag}-{}.gguf", std::process::id())))
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn llama_cpp_conversion_matches_transformers() {
    let path = llama_cpp_file();
    let f = GgufFile::open(&path).expect("open");
    // The file states the rotated dims as llama.cpp does (head_dim 24 * 0.75), not our factor.
    assert_eq!(f.get("glm4.rope.dimension_count").and_then(GgufValue::as_u64), Some(18));
    assert!(f.get("glm4.rope.partial_rotary_factor").is_none());
    let (rel, max_diff, max_ref) = compare(&path);
    eprintln!("llama.cpp-converted glm4: rel. error {rel:.2e}, max |logit diff| {max_diff:.2e} (max |logit| {max_ref:.2})");
    assert!(rel < MAX_REL_ERR, "llama.cpp-converted glm4: rel. error {rel:.2e} (bound {MAX_REL_ERR:.0e})");
}

/// Q/K/V (and their biases) fused into `attn_qkv`, rows `[q | k | v]`.
#[test]
fn fused_qkv_layout_matches_transformers() {
    let out = Scratch::new("fused");
    rewrite(
        &llama_cpp_file(),
        &out.0,
        |_| {},
        |ts| {
            let find = |n: &str| ts.iter().find(|t| t.0 == n).unwrap_or_else(|| panic!("no {n}")).clone();
            let mut kept: Tensors = ts
                .iter()
                .filter(|t| !(t.0.contains(".attn_q.") || t.0.contains(".attn_k.") || t.0.contains(".attn_v.")))
                .cloned()
                .collect();
            for il in 0..4 {
                for kind in ["weight", "bias"] {
                    let parts: Vec<_> = ["attn_q", "attn_k", "attn_v"].iter().map(|p| find(&format!("blk.{il}.{p}.{kind}"))).collect();
                    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.2.iter().copied()).collect();
                    let rows: u64 = parts.iter().map(|p| *p.1.last().expect("dims")).sum();
                    let dims = if kind == "weight" { vec![parts[0].1[0], rows] } else { vec![rows] };
                    kept.push((format!("blk.{il}.attn_qkv.{kind}"), dims, bytes));
                }
            }
            kept
        },
    );
    let (rel, max_diff, _) = compare(&out.0);
    eprintln!("fused attn_qkv glm4: rel. error {rel:.2e}, max |logit diff| {max_diff:.2e}");
    assert!(rel < MAX_REL_ERR, "fused attn_qkv glm4: rel. error {rel:.2e} (bound {MAX_REL_ERR:.0e})");
}

/// Each broken variant is refused, and the message names what is wrong.
#[test]
fn bad_input_is_refused_by_name() {
    let src = llama_cpp_file();
    let set = |k: &'static str, v: GgufValue| move |w: &mut GgufWriter| w.set(k, v);
    let cases: Vec<(&str, Box<dyn FnOnce(&mut GgufWriter)>, Box<dyn FnOnce(Tensors) -> Tensors>, &str)> = vec![
        (
            "missing-post-ffw-norm",
            Box::new(|_| {}),
            Box::new(|ts: Tensors| ts.into_iter().filter(|t| t.0 != "blk.2.post_ffw_norm.weight").collect()),
            "blk.2.post_ffw_norm.weight",
        ),
        (
            "odd-gate-up",
            Box::new(|_| {}),
            Box::new(|ts: Tensors| {
                ts.into_iter()
                    .map(|(n, d, b)| {
                        if n == "blk.1.ffn_up.weight" {
                            (n, vec![d[0], d[1] - 1], b[..b.len() - 4 * d[0] as usize].to_vec())
                        } else {
                            (n, d, b)
                        }
                    })
                    .collect()
            }),
            "blk.1.ffn_up.weight",
        ),
        ("unknown-rope-scaling", Box::new(set("glm4.rope.scaling.type", GgufValue::Str("su-per".into()))), Box::new(|ts| ts), "su-per"),
        (
            "mrope",
            Box::new(set("glm4.rope.dimension_sections", GgufValue::Array(GgufArray::I32(vec![8, 12, 12, 0])))),
            Box::new(|ts| ts),
            "M-RoPE",
        ),
        ("odd-rot-dims", Box::new(set("glm4.rope.dimension_count", GgufValue::U32(17))), Box::new(|ts| ts), "rope.dimension_count"),
    ];
    for (tag, meta, tensors, needle) in cases {
        let out = Scratch::new(tag);
        rewrite(&src, &out.0, meta, tensors);
        match load(&out.0) {
            Ok(_) => panic!("{tag}: loaded, but must be refused"),
            Err(e) => {
                eprintln!("{tag}: {e}");
                assert!(e.contains(needle), "{tag}: the error does not name '{needle}': {e}");
            }
        }
    }
}
