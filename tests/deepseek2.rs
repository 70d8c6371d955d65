//! The DeepSeek-V2/V3 plugin (`plugins/deepseek2`: GGUF `deepseek2`, HF `DeepseekV2ForCausalLM`,
//! `DeepseekV3ForCausalLM`) on files written by llama.cpp's converter, its latent KV cache, the
//! older fused-`attn_kv_b` layout, and its errors on bad or hostile input.
//!
//! `tests/hf_tiny.rs` checks the HF directories and our own GGUF conversions against transformers;
//! this file checks what only these cases have:
//! - `tests/fixtures/deepseek{2,3}-tiny.llama-cpp.f32.gguf`: the tiny models (`hf-tiny/deepseek2`,
//!   `hf-tiny/deepseek3`) converted by llama.cpp's `convert_hf_to_gguf.py`
//!   (`scripts/fixtures/deepseek2_llama_cpp_gguf.py`, llama-cpp-python 0.3.36's llama.cpp,
//!   `--outtype f32`): llama.cpp's tensor names (`attn_k_b` / `attn_v_b` split per head,
//!   `exp_probs_b.bias`) and metadata (`head_count_kv` = 1, the `*_mla` lengths, YaRN's
//!   `yarn_log_multiplier`, no `expert_gating_func` for deepseek3: sigmoid because the layer has a
//!   selection bias), against transformers' logits (`hf-tiny/*/logits.f32`);
//! - the same files rewritten as older converters wrote them: one fused `attn_kv_b` per layer,
//!   `head_count_kv` = n_head, `key_length` = qk_nope + qk_rope, `value_length` = v_head_dim, no
//!   `*_mla` keys; the host derives `attn_k_b` / `attn_v_b` at load (`source_derived.rs`);
//! - the KV cache holds one row of kv_lora_rank + qk_rope_head_dim per token and layer;
//! - broken variants are refused with a message naming what is wrong, and hostile configs (huge,
//!   zero and negative sizes in every MLA / MoE key) give errors, never panics.
//!
//! Like every test of the binary, these run on the CPU unless `ROCMFORGE_DEVICE` names a GPU; the
//! GPU backend refuses the per-head ops and latent attention (`--device auto` runs on the CPU).

mod common;

use std::path::{Path, PathBuf};

use common::{registry, repo};
use rocmforge_model::gguf::{GgufFile, GgufValue, GgufWriter};
use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::graph::LayerKv;
use rocmforge_runtime::{build_graph, ModelSource};

/// The bounds of `tests/hf_tiny.rs` for an f32 model (f16 KV cache, f32 math elsewhere).
const MAX_REL_ERR: f64 = 5e-3;
const N_CTX: usize = 64;
const VARIANTS: [&str; 2] = ["deepseek2", "deepseek3"];

fn llama_cpp_file(variant: &str) -> PathBuf {
    let p = repo().join(format!("tests/fixtures/{variant}-tiny.llama-cpp.f32.gguf"));
    assert!(p.exists(), "{} is missing: it is committed; regenerate with scripts/fixtures/deepseek2_llama_cpp_gguf.py", p.display());
    p
}

fn hf_dir(variant: &str) -> PathBuf {
    repo().join("tests/fixtures/hf-tiny").join(variant)
}

/// transformers' sequences and logits for `hf-tiny/<variant>`.
fn reference(variant: &str) -> (Vec<Vec<u32>>, Vec<f32>) {
    let dir = hf_dir(variant);
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
    if plugin.name != "deepseek2" {
        return Err(format!("{} is served by '{}', not the deepseek2 plugin", model.display(), plugin.name));
    }
    let graph = build_graph(plugin, &src).map_err(|e| format!("graph: {e}"))?;
    Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: N_CTX / 16 }).map_err(|e| format!("executor: {e}"))
}

/// (relative L2 error, max |logit difference|) of every sequence of `variant`, each fed as a
/// prefill of 8 tokens and then one token at a time (the latent KV cache path), against transformers.
fn compare(model: &Path, variant: &str) -> (f64, f64) {
    let (seqs, want) = reference(variant);
    let mut exec = load(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let n_vocab = exec.n_out_cols();
    let table: Vec<u32> = (0..(N_CTX / 16) as u32).collect();
    let (mut num, mut den, mut max_diff) = (0f64, 0f64, 0f64);
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
        }
        off += want.len();
    }
    assert_eq!(off, want.len(), "the reference has more sequences than were run");
    ((num / den).sqrt(), max_diff)
}

type Tensors = Vec<(String, Vec<u64>, Vec<u8>)>;

/// Rewrite `src` into `dst`: `meta` edits the metadata; `tensors` maps the (name, dims, f32 bytes)
/// list of the source to the tensors written.
fn rewrite(src: &Path, dst: &Path, meta: impl FnOnce(&mut GgufWriter), tensors: impl FnOnce(Tensors) -> Tensors) {
    rewrite_as(src, dst, meta, tensors, &[])
}

/// [`rewrite`], storing the tensors named in `q8` as Q8_0.
fn rewrite_as(src: &Path, dst: &Path, meta: impl FnOnce(&mut GgufWriter), tensors: impl FnOnce(Tensors) -> Tensors, q8: &[&str]) {
    use rocmforge_quant::GgmlType;
    let f = GgufFile::open(src).expect("open");
    let mut w = GgufWriter::new();
    w.copy_metadata_from(&f);
    meta(&mut w);
    let all: Tensors = f.tensors().iter().map(|t| (t.name.clone(), t.dims.clone(), f.tensor_data(t).to_vec())).collect();
    let mut out = tensors(all);
    for (name, dims, bytes) in &mut out {
        let ty = if q8.contains(&name.as_str()) { GgmlType::Q8_0 } else { GgmlType::F32 };
        if ty == GgmlType::Q8_0 {
            let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            *bytes = rocmforge_quant::quantize_to_vec(ty, &v).expect("q8_0");
        }
        w.add_tensor_info(name.clone(), dims.clone(), ty).expect("tensor info");
    }
    w.write_file(dst, |i| Ok(out[i].2.clone())).expect("write");
}

/// A scratch path, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!("rf-deepseek2-{tag}-{}", std::process::id())))
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn meta_u64(f: &GgufFile, key: &str) -> Option<u64> {
    f.get(key).and_then(GgufValue::as_u64)
}

#[test]
fn llama_cpp_conversions_match_transformers() {
    for variant in VARIANTS {
        let path = llama_cpp_file(variant);
        let f = GgufFile::open(&path).expect("open");
        // llama.cpp's MLA layout: one latent KV head, split kv_b, *_mla head sizes.
        assert_eq!(meta_u64(&f, "deepseek2.attention.head_count_kv"), Some(1));
        assert_eq!(meta_u64(&f, "deepseek2.attention.key_length"), Some(32 + 8));
        assert_eq!(meta_u64(&f, "deepseek2.attention.key_length_mla"), Some(16 + 8));
        assert!(f.tensor("blk.1.attn_k_b.weight").is_some() && f.tensor("blk.1.attn_kv_b.weight").is_none());
        let (rel, max_diff) = compare(&path, variant);
        eprintln!("llama.cpp-converted {variant}: rel. error {rel:.2e}, max |logit diff| {max_diff:.2e}");
        assert!(rel < MAX_REL_ERR, "llama.cpp-converted {variant}: rel. error {rel:.2e} (bound {MAX_REL_ERR:.0e})");
    }
    // deepseek3's file has no expert_gating_func (its config has no scoring_func): the selection
    // bias makes it sigmoid, as transformers' V3 router is.
    let f = GgufFile::open(llama_cpp_file("deepseek3")).expect("open");
    assert!(f.get("deepseek2.expert_gating_func").is_none() && f.tensor("blk.1.exp_probs_b.bias").is_some());
}

/// The older layout: fused `attn_kv_b` [r, H·(dn+dv)] rebuilt from the split tensors, and the
/// metadata older converters wrote.
fn fused_kv_b(ts: Tensors, n_layer: usize) -> Tensors {
    let find = |n: &str| ts.iter().find(|t| t.0 == n).unwrap_or_else(|| panic!("no {n}")).clone();
    let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>();
    let mut kept: Tensors = ts.iter().filter(|t| !t.0.contains(".attn_k_b.") && !t.0.contains(".attn_v_b.")).cloned().collect();
    for il in 0..n_layer {
        let (kb, vb) = (find(&format!("blk.{il}.attn_k_b.weight")), find(&format!("blk.{il}.attn_v_b.weight")));
        let (dn, r, h) = (kb.1[0] as usize, kb.1[1] as usize, kb.1[2] as usize);
        let dv = vb.1[1] as usize;
        let (k, v) = (f32s(&kb.2), f32s(&vb.2));
        let mut rows = Vec::with_capacity(h * (dn + dv) * r);
        for hh in 0..h {
            for i in 0..dn {
                rows.extend((0..r).map(|c| k[(hh * r + c) * dn + i]));
            }
            rows.extend_from_slice(&v[hh * dv * r..(hh + 1) * dv * r]);
        }
        kept.push((
            format!("blk.{il}.attn_kv_b.weight"),
            vec![r as u64, (h * (dn + dv)) as u64],
            rows.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    kept
}

#[test]
fn fused_kv_b_files_are_split_at_load_and_match_transformers() {
    for variant in VARIANTS {
        let out = Scratch::new(&format!("fused-{variant}"));
        rewrite(
            &llama_cpp_file(variant),
            &out.0,
            |w| {
                w.set("deepseek2.attention.head_count_kv", GgufValue::U32(4));
                w.set("deepseek2.attention.key_length", GgufValue::U32(16 + 8));
                w.set("deepseek2.attention.value_length", GgufValue::U32(12));
                w.remove("deepseek2.attention.key_length_mla");
                w.remove("deepseek2.attention.value_length_mla");
            },
            |ts| fused_kv_b(ts, 4),
        );
        let f = GgufFile::open(&out.0).expect("open");
        assert!(f.tensor("blk.0.attn_kv_b.weight").is_some() && f.tensor("blk.0.attn_k_b.weight").is_none());
        let (rel, max_diff) = compare(&out.0, variant);
        eprintln!("fused attn_kv_b {variant}: rel. error {rel:.2e}, max |logit diff| {max_diff:.2e}");
        assert!(rel < MAX_REL_ERR, "fused attn_kv_b {variant}: rel. error {rel:.2e} (bound {MAX_REL_ERR:.0e})");
    }
}

/// `kv_b` split again (the inverse of [`fused_kv_b`]): `attn_k_b` [dn, r, H], `attn_v_b` [r, dv, H].
fn split_kv_b(ts: Tensors, n_layer: usize, dn: usize, dv: usize) -> Tensors {
    let mut kept: Tensors = ts.iter().filter(|t| !t.0.contains(".attn_kv_b.")).cloned().collect();
    for il in 0..n_layer {
        let kv = ts.iter().find(|t| t.0 == format!("blk.{il}.attn_kv_b.weight")).expect("attn_kv_b");
        let (r, h) = (kv.1[0] as usize, kv.1[1] as usize / (dn + dv));
        let x: Vec<f32> = kv.2.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let (mut k, mut v) = (vec![0f32; dn * r * h], Vec::with_capacity(r * dv * h));
        for hh in 0..h {
            for i in 0..dn {
                for c in 0..r {
                    k[(hh * r + c) * dn + i] = x[(hh * (dn + dv) + i) * r + c];
                }
            }
            v.extend_from_slice(&x[(hh * (dn + dv) + dn) * r..(hh + 1) * (dn + dv) * r]);
        }
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        kept.push((format!("blk.{il}.attn_k_b.weight"), vec![dn as u64, r as u64, h as u64], bytes(&k)));
        kept.push((format!("blk.{il}.attn_v_b.weight"), vec![r as u64, dv as u64, h as u64], bytes(&v)));
    }
    kept
}

/// The named tensors' values replaced by their Q8_0 round trip (so that storing them as Q8_0
/// again gives the very same blocks: Q8_0 quantization of its own output is exact).
fn q8_round_trip(mut ts: Tensors, names: &[&str]) -> Tensors {
    for (name, _, bytes) in &mut ts {
        if names.contains(&name.as_str()) {
            let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let q = rocmforge_quant::quantize_to_vec(rocmforge_quant::GgmlType::Q8_0, &v).expect("q8_0");
            let back = rocmforge_quant::dequantize_to_vec(rocmforge_quant::GgmlType::Q8_0, &q, v.len()).expect("q8_0");
            *bytes = back.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
    }
    ts
}

/// A quantized fused `attn_kv_b` (Q8_0): the value half keeps its Q8_0 rows, the key half is
/// dequantized and transposed. The same model written split (`attn_k_b` as F32 of the
/// dequantized values, `attn_v_b` as the same Q8_0 blocks) must give the very same logits.
#[test]
fn quantized_fused_kv_b_is_split_at_load_exactly() {
    let kv_b: Vec<String> = (0..4).map(|il| format!("blk.{il}.attn_kv_b.weight")).collect();
    let v_b: Vec<String> = (0..4).map(|il| format!("blk.{il}.attn_v_b.weight")).collect();
    let (kv_b, v_b): (Vec<&str>, Vec<&str>) = (kv_b.iter().map(String::as_str).collect(), v_b.iter().map(String::as_str).collect());
    let (fused, split) = (Scratch::new("q8-fused"), Scratch::new("q8-split"));
    let legacy = |w: &mut GgufWriter| {
        w.remove("deepseek2.attention.key_length_mla");
        w.remove("deepseek2.attention.value_length_mla");
        w.set("deepseek2.attention.key_length", GgufValue::U32(16 + 8));
        w.set("deepseek2.attention.value_length", GgufValue::U32(12));
    };
    rewrite_as(&llama_cpp_file("deepseek2"), &fused.0, legacy, |ts| q8_round_trip(fused_kv_b(ts, 4), &kv_b), &kv_b);
    rewrite_as(&llama_cpp_file("deepseek2"), &split.0, |_| {}, |ts| split_kv_b(q8_round_trip(fused_kv_b(ts, 4), &kv_b), 4, 16, 12), &v_b);
    let f = GgufFile::open(&fused.0).expect("open");
    assert_eq!(f.tensor("blk.0.attn_kv_b.weight").map(|t| t.ty), Some(rocmforge_quant::GgmlType::Q8_0));
    let (seqs, _) = reference("deepseek2");
    let run = |model: &Path| -> Vec<f32> {
        let mut exec = load(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
        let table: Vec<u32> = (0..(N_CTX / 16) as u32).collect();
        let mut got = Vec::new();
        for seq in &seqs {
            let mut feed = |tokens: &[u32], pos: usize| {
                let c = SeqChunk { tokens, pos_start: pos, block_table: &table, group_tables: &[], logits: Logits::All };
                got.extend_from_slice(exec.forward(std::slice::from_ref(&c)).expect("forward"));
            };
            feed(&seq[..8], 0);
            for (i, t) in seq.iter().enumerate().skip(8) {
                feed(std::slice::from_ref(t), i);
            }
        }
        got
    };
    let (a, b) = (run(&fused.0), run(&split.0));
    assert_eq!(a.len(), b.len());
    assert!(
        a == b,
        "Q8_0 fused attn_kv_b differs from the same values split: max diff {}",
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    );
}

/// One cache row per token and layer: the latent (32) and the rope key (8), V read from it.
#[test]
fn the_kv_cache_holds_the_latent_once_per_token() {
    for model in [hf_dir("deepseek2"), llama_cpp_file("deepseek3")] {
        let exec = load(&model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
        let layers: Vec<LayerKv> = exec.graph().layers.iter().map(|l| l.expect("every layer attends")).collect();
        assert_eq!(layers.len(), 4);
        for l in &layers {
            assert_eq!((l.n_head_kv, l.head_dim_k, l.head_dim_v, l.v_in_k), (1, 32 + 8, 32, true), "{}", model.display());
            // f16: 40 values of 2 bytes, nothing for V (4 heads of 24 + 12 would be 288 values).
            assert_eq!(l.bytes_per_token(|d| 2 * d), 80);
        }
    }
}

/// A broken variant: its tag, the metadata and tensor edits, and what the error must name.
type BadCase = (&'static str, Box<dyn FnOnce(&mut GgufWriter)>, Box<dyn FnOnce(Tensors) -> Tensors>, &'static str);

/// Each broken variant is refused, and the message names what is wrong.
#[test]
fn bad_input_is_refused_by_name() {
    let src = llama_cpp_file("deepseek3");
    let set = |k: &'static str, v: GgufValue| move |w: &mut GgufWriter| w.set(k, v);
    let drop_tensor = |name: &'static str| move |ts: Tensors| ts.into_iter().filter(|t| t.0 != name).collect::<Tensors>();
    let cases: Vec<BadCase> = vec![
        ("missing-kv-norm", Box::new(|_| {}), Box::new(drop_tensor("blk.2.attn_kv_a_norm.weight")), "blk.2.attn_kv_a_norm.weight"),
        ("missing-k-b", Box::new(|_| {}), Box::new(drop_tensor("blk.1.attn_k_b.weight")), "blk.1.attn_k_b.weight"),
        ("gating", Box::new(set("deepseek2.expert_gating_func", GgufValue::U32(4))), Box::new(|ts| ts), "expert_gating_func 4"),
        ("odd-rope", Box::new(set("deepseek2.rope.dimension_count", GgufValue::U32(7))), Box::new(|ts| ts), "rope.dimension_count 7"),
        (
            "key-length",
            Box::new(set("deepseek2.attention.key_length_mla", GgufValue::U32(8))),
            Box::new(|ts| ts),
            "key length 8 (qk_nope_head_dim",
        ),
        ("groups", Box::new(set("deepseek2.expert_group_count", GgufValue::U32(3))), Box::new(|ts| ts), "not a valid grouping"),
        ("experts-used", Box::new(set("deepseek2.expert_used_count", GgufValue::U32(9))), Box::new(|ts| ts), "expert_used_count 9"),
        ("scaling", Box::new(set("deepseek2.rope.scaling.type", GgufValue::Str("su-per".into()))), Box::new(|ts| ts), "su-per"),
        (
            "expert-shape",
            Box::new(|_| {}),
            Box::new(|ts: Tensors| {
                ts.into_iter()
                    .map(|(n, d, b)| {
                        if n == "blk.3.ffn_up_exps.weight" {
                            (n, vec![d[0], d[1], d[2] / 2], b[..b.len() / 2].to_vec())
                        } else {
                            (n, d, b)
                        }
                    })
                    .collect()
            }),
            "blk.3.ffn_up_exps.weight",
        ),
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

/// Hostile `config.json` values in every key the plugin reads (as the `hf_config` fuzz target
/// tries them): huge, zero, negative and fractional sizes give an error (or a model that runs),
/// never a panic, an overflow or a runaway allocation.
#[test]
fn hostile_configs_are_errors_not_panics() {
    use serde_json::{json, Value};
    let keys = [
        "num_attention_heads",
        "hidden_size",
        "kv_lora_rank",
        "q_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "n_routed_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "first_k_dense_replace",
        "routed_scaling_factor",
        "moe_intermediate_size",
        "num_hidden_layers",
        "rope_parameters.mscale_all_dim",
        "rope_parameters.factor",
    ];
    let values = [json!(0), json!(-1), json!(1), json!(3), json!(u32::MAX), json!(u64::MAX), json!(1u64 << 40), json!(0.5), json!(1e300)];
    let reg = registry();
    for variant in VARIANTS {
        let scratch = Scratch::new(&format!("hostile-{variant}"));
        std::fs::create_dir_all(&scratch.0).expect("mkdir");
        std::fs::copy(hf_dir(variant).join("model.safetensors"), scratch.0.join("model.safetensors")).expect("copy");
        let base: Value = serde_json::from_slice(&std::fs::read(hf_dir(variant).join("config.json")).expect("config")).expect("json");
        let (mut refused, mut ran) = (0, 0);
        for key in keys {
            for v in &values {
                let mut cfg = base.clone();
                let (head, last) = key.rsplit_once('.').map_or((None, key), |(h, l)| (Some(h), l));
                let obj = match head {
                    Some(h) => cfg.get_mut(h).and_then(Value::as_object_mut),
                    None => cfg.as_object_mut(),
                };
                obj.expect("config object").insert(last.to_string(), v.clone());
                std::fs::write(scratch.0.join("config.json"), serde_json::to_vec(&cfg).expect("json")).expect("write");
                let outcome = std::panic::catch_unwind(|| -> Result<(), String> {
                    let src = ModelSource::open(&scratch.0, &reg).map_err(|e| e.to_string())?;
                    let plugin = reg.for_source(&src).map_err(|e| e.to_string())?;
                    let graph = build_graph(plugin, &src).map_err(|e| e.to_string())?;
                    let mut exec = Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: 2 }).map_err(|e| e.to_string())?;
                    let c = SeqChunk { tokens: &[1, 2, 3], pos_start: 0, block_table: &[0, 1], group_tables: &[], logits: Logits::Last };
                    exec.forward(std::slice::from_ref(&c)).map(|_| ()).map_err(|e| e.to_string())
                });
                match outcome {
                    Err(_) => panic!("{variant}: {key} = {v} panicked"),
                    Ok(Err(e)) => {
                        assert!(!e.contains("panicked"), "{variant}: {key} = {v}: a plugin or host callback panicked: {e}");
                        refused += 1;
                    }
                    Ok(Ok(())) => ran += 1,
                }
            }
        }
        eprintln!("{variant}: {refused} hostile configs refused, {ran} ran");
        assert!(refused > keys.len(), "{variant}: hostile values were not refused ({refused})");
    }
}
