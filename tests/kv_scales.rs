//! fp8 KV cache scales: read from a checkpoint under every naming in use, carried through our
//! HF -> GGUF conversion, applied by the CPU backend, and calibrated from the model's own K/V
//! (`--kv-scales auto`), against the fixture `tests/fixtures/kv-scales-tiny` (a tiny random
//! Llama whose scales and per-head K/V maxima come from transformers' forward pass; written by
//! `/work/venv-kv/bin/python scripts/fixtures/kv_scales_tiny.py`).

mod common;

use std::path::PathBuf;

use rocmforge_model::gguf::{GgufFile, GgufWriter};
use rocmforge_quant::GgmlType;
use rocmforge_runtime::exec::{Device, Executor, KvCacheType, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::kv_scales::{CALIBRATION_MARGIN, E4M3_MAX};
use rocmforge_runtime::{build_graph, KvHeadScales, KvScales, KvScalesOrigin, ModelSource};

fn fixture() -> PathBuf {
    common::repo().join("tests/fixtures/kv-scales-tiny")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn tokens() -> Vec<u32> {
    reference()["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("token") as u32).collect()
}

fn executor(path: &std::path::Path, ty: KvCacheType) -> Executor {
    let reg = common::registry();
    let src = ModelSource::open(path, &reg).expect("open model");
    let graph = build_graph(reg.for_source(&src).expect("plugin"), &src).expect("graph");
    Executor::with_kv_type(graph, &src, KvConfig { block_size: 16, n_blocks: 8 }, ty, 64, Device::Cpu).expect("executor")
}

/// Logits of every token of the reference sequence.
fn logits(exec: &mut Executor) -> Vec<f32> {
    let toks = tokens();
    let table: Vec<u32> = (0..4).collect();
    let c = SeqChunk { tokens: &toks, pos_start: 0, block_table: &table, group_tables: &[], logits: Logits::All };
    exec.forward(std::slice::from_ref(&c)).expect("forward").to_vec()
}

/// The scales the loader must read, per layer (reference.json's `scales`).
fn expected_scales() -> Vec<KvHeadScales> {
    let r = reference();
    (0..4).map(|il| KvHeadScales { k: floats(&r["scales"][il.to_string()]["k"]), v: floats(&r["scales"][il.to_string()]["v"]) }).collect()
}

fn assert_scales(got: &KvScales, what: &str) {
    assert_eq!(got.origin, KvScalesOrigin::Checkpoint, "{what}");
    for (il, want) in expected_scales().iter().enumerate() {
        assert_eq!(got.layer(il), Some(want), "{what}: layer {il}");
    }
}

/// Every naming (per tensor `self_attn.k_scale` / `v_scale`, compressed-tensors'
/// `k_proj.output_scale`, per KV head in BF16, the deprecated shared `kv_scale`) is read into
/// the layer it names, exactly; the Q scale decoy is not taken; an f16 cache ignores them.
#[test]
fn checkpoint_scales_are_read_under_every_name() {
    let reg = common::registry();
    let src = ModelSource::open(&fixture(), &reg).expect("open");
    let names = src.tensor_names();
    for il in 0..4 {
        for n in [format!("blk.{il}.attn_k_scale"), format!("blk.{il}.attn_v_scale")] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }
    assert!(!names.iter().any(|n| n.contains("q_scale") || n.contains("output_scale")), "{names:?}");
    let exec = executor(&fixture(), KvCacheType::Fp8E4M3);
    let got = exec.kv_scales().expect("the checkpoint's scales");
    assert_scales(got, "HF directory");
    assert!(got.per_head(), "layer 2 is per KV head");
    println!("{}", got.summary());
    assert!(executor(&fixture(), KvCacheType::F16).kv_scales().is_none(), "f16 ignores fp8 scales");
}

/// Our HF -> GGUF conversion (the `rocmforge quantize` / `/api/create` adapter) writes the scales
/// as `blk.N.attn_k_scale` / `attn_v_scale` F32 tensors, and the GGUF gives back the same scales.
/// A scale tensor that fits no head count is an error naming it.
#[test]
fn gguf_conversion_carries_the_scales() {
    use rocmforge_model::quantize::{quantize_model, FileType, QuantizeOptions};
    let reg = common::registry();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("kv-scales-tiny.f16.gguf");
    let input = rocmforge_server::hf_import::open(&fixture(), Some(&reg)).expect("open HF directory");
    quantize_model(&input, &out, &QuantizeOptions::new(FileType::from_name("f16").expect("f16")), &|_, _, _| {}).expect("convert");
    let f = GgufFile::open(&out).expect("gguf");
    for il in 0..4 {
        let t = f.tensor(&format!("blk.{il}.attn_k_scale")).expect("K scale tensor");
        assert_eq!(t.ty, GgmlType::F32);
    }
    let exec = executor(&out, KvCacheType::Fp8E4M3);
    assert_scales(exec.kv_scales().expect("scales from the GGUF"), "converted GGUF");

    // The same file with layer 1's V scale replaced by 3 values (the model has 2 KV heads).
    let bad = tmp.path().join("bad.gguf");
    let mut w = GgufWriter::new();
    w.copy_metadata_from(&f);
    let name = "blk.1.attn_v_scale";
    for t in f.tensors() {
        let dims = if t.name == name { vec![3] } else { t.dims.clone() };
        w.add_tensor_info(t.name.clone(), dims, t.ty).expect("info");
    }
    let three: Vec<u8> = [0.5f32, 0.5, 0.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    w.write_file(&bad, |i| Ok(if f.tensors()[i].name == name { three.clone() } else { f.tensor_data(&f.tensors()[i]).to_vec() }))
        .expect("write");
    let src = ModelSource::open(&bad, &reg).expect("open");
    let graph = build_graph(reg.for_source(&src).expect("plugin"), &src).expect("graph");
    let e = Executor::with_kv_type(graph, &src, KvConfig { block_size: 16, n_blocks: 8 }, KvCacheType::Fp8E4M3, 64, Device::Cpu)
        .err()
        .expect("3 scales for 2 KV heads")
        .to_string();
    assert!(e.contains(name) && e.contains("3 fp8 V scales for 2 KV heads"), "{e}");
}

/// transformers' logits with the attention's K/V quantized to E4M3 and back (`logits.NAME.f32`).
fn sim_logits(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture().join(format!("logits.{name}.f32"))).expect("logits file");
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The checkpoint's scales are what the cache stores and reads with: our fp8 logits match
/// transformers' forward with K/V rounded through E4M3 at the same scales (the same roundings,
/// only f32 summation orders differ), and with scale 1.0 they match transformers at 1.0
/// instead; the two scale choices are far apart in comparison, so a scale not applied (or
/// applied on one side only) fails.
#[test]
fn checkpoint_scales_are_applied() {
    let (sim, sim_one) = (sim_logits("fp8"), sim_logits("fp8-one"));
    let scaled = logits(&mut executor(&fixture(), KvCacheType::Fp8E4M3));
    let ones = KvScales { layers: vec![Some(KvHeadScales::per_tensor(1.0, 1.0)); 4], origin: KvScalesOrigin::Checkpoint };
    let mut fp8_one = executor(&fixture(), KvCacheType::Fp8E4M3);
    fp8_one.set_kv_scales(ones).expect("scales");
    let unscaled = logits(&mut fp8_one);
    assert_eq!(scaled.len(), sim.len());
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let (d, d_one, apart) = (max_diff(&scaled, &sim), max_diff(&unscaled, &sim_one), max_diff(&sim, &sim_one));
    println!(
        "tiny Llama, 32 tokens, max |Δlogit| vs transformers with E4M3 K/V: checkpoint scales {d:.2e}, scale 1.0 {d_one:.2e}; \
         the two scale choices are {apart:.3} apart"
    );
    // Measured 2026-12-08 (see the printout): bounds with margin, far below `apart`.
    assert!(d < 1e-4 && d_one < 1e-4, "vs transformers' E4M3 round trip: {d}, {d_one}");
    assert!(apart > 0.1, "the fixture's scales must matter: {apart}");
}

/// `calibrate_kv_scales` measures per-layer, per-KV-head maxima equal to transformers' cached K
/// (after RoPE) and V over the same tokens: layer 0 exactly up to f32 rounding; later layers
/// read the fp8 cache of the layers before them during the calibration pass (scale 1.0, as
/// vLLM's first pass), so their maxima move by that cache's rounding (bound measured, printed).
#[test]
fn calibration_matches_transformers_amax() {
    let r = reference();
    let mut exec = executor(&fixture(), KvCacheType::Fp8E4M3);
    let toks = tokens();
    // Chunks of 10: the calibration text runs as chunked prefill.
    let got = exec.calibrate_kv_scales(&toks, 10).expect("calibrate").expect("fp8 cache");
    assert_eq!(got.origin, KvScalesOrigin::Calibrated { n_tokens: toks.len() });
    assert_eq!(exec.kv_scales(), Some(&got));
    let mut worst = [0f64; 4];
    for (il, w) in worst.iter_mut().enumerate() {
        let s = got.layer(il).expect("layer");
        for (which, list) in [("k", &s.k), ("v", &s.v)] {
            let amax = floats(&r["amax"][il.to_string()][which]);
            assert_eq!(list.len(), amax.len(), "layer {il} {which}: one scale per KV head");
            for (g, (&sc, &a)) in list.iter().zip(&amax).enumerate() {
                let want = a as f64 * CALIBRATION_MARGIN as f64 / E4M3_MAX as f64;
                let rel = (sc as f64 - want).abs() / want;
                *w = w.max(rel);
                let bound = if il == 0 { 1e-5 } else { 0.05 };
                assert!(rel <= bound, "layer {il} {which} head {g}: scale {sc}, transformers' amax gives {want} (rel {rel:.2e} > {bound})");
            }
        }
    }
    let worst: Vec<String> = worst.iter().map(|w| format!("{w:.2e}")).collect();
    println!("calibrated scales vs transformers' amax x {CALIBRATION_MARGIN} / 448, worst relative difference per layer: {worst:?}");
    // f16 runs nothing and sets nothing.
    let mut f16 = executor(&fixture(), KvCacheType::F16);
    assert_eq!(f16.calibrate_kv_scales(&toks, 10).expect("f16"), None);
    assert!(f16.kv_scales().is_none());
}
