//! Derived tensors: weights a plugin's tensor table computes at load from another tensor of the
//! same model, for GGUF files and HF directories alike.
//!
//! A tensor-map row whose HF name is `gguf:<GGUF name>` (with `{il}`) derives its GGUF-named
//! tensor from that other GGUF-named tensor by its load transform, when the model lacks the
//! tensor itself and has the source. Written for DeepSeek-V2's MLA: llama.cpp's converter writes
//! `attn_k_b` / `attn_v_b`, older files (and every HF checkpoint, through the row mapping
//! `kv_b_proj` to `attn_kv_b`) hold the fused `attn_kv_b`; rows
//! `("blk.{il}.attn_k_b.weight", "gguf:blk.{il}.attn_kv_b.weight", OPTIONAL, KV_B_TO_K_B)` give
//! every such model the split tensors the graph reads (DESIGN.md §2.5: weight fixes at load).
//!
//! ```text
//!   attn_kv_b [r, H·(dn+dv)]   head h: rows h·(dn+dv) .. +dn (key), +dn .. +dn+dv (value)
//!     KV_B_TO_K_B -> attn_k_b [dn, r, H]   head h: its key rows transposed (r rows of dn)
//!     KV_B_TO_V_B -> attn_v_b [r, dv, H]   head h: its value rows as they are (dv rows of r)
//! ```
//!
//! H = `{arch}.attention.head_count`; dv = `attention.value_length_mla`, else (older files)
//! `attention.value_length`; dn = `attention.key_length_mla` (else `key_length`) minus
//! `rope.dimension_count`. The value half keeps the source's rows, so any type (quantized
//! included) is copied as is; the key half is transposed element by element: F32/F16/BF16 keep
//! their type, quantized sources are dequantized to F32.

use rocmforge_quant::GgmlType;

use crate::source::{ModelSource, Weight, WeightBytes};
use crate::RuntimeError;

/// HF-name prefix of a derived tensor-map row.
pub(crate) const DERIVED_PREFIX: &str = "gguf:";

/// Where a derived tensor comes from.
#[derive(Clone, Debug)]
pub(crate) struct Derived {
    /// GGUF name of the source tensor.
    pub source: String,
    pub transform: u32,
}

/// The per-head split of a fused `kv_b`.
struct KvB {
    n_head: usize,
    dn: usize,
    dv: usize,
}

fn kv_b_dims(src: &ModelSource, target: &str, r: usize, rows: usize) -> Result<KvB, RuntimeError> {
    let arch = src.arch();
    let get = |k: &str| src.meta(&format!("{arch}.{k}")).and_then(|v| v.as_u64()).map(|v| v as usize);
    let bad = |what: String| RuntimeError::Weight { name: target.to_string(), what };
    let n_head = get("attention.head_count").ok_or_else(|| bad(format!("{arch}.attention.head_count is missing")))?;
    let dk = get("attention.key_length_mla").or_else(|| get("attention.key_length"));
    let dv = get("attention.value_length_mla").or_else(|| get("attention.value_length"));
    let dr = get("rope.dimension_count");
    let (Some(dk), Some(dv), Some(dr)) = (dk, dv, dr) else {
        return Err(bad(format!("splitting kv_b needs {arch}.attention.key_length(_mla), value_length(_mla) and rope.dimension_count")));
    };
    let dn = dk.checked_sub(dr).filter(|&d| d > 0).ok_or_else(|| bad(format!("key length {dk} leaves no room beside {dr} rope dims")))?;
    let want = dn.checked_add(dv).and_then(|d| d.checked_mul(n_head));
    if want != Some(rows) || r == 0 {
        return Err(bad(format!("kv_b has {rows} rows of {r}, expected {n_head} heads x ({dn} + {dv})")));
    }
    Ok(KvB { n_head, dn, dv })
}

/// Type and GGUF dims the derivation produces from a source of `ty` and `dims`.
pub(crate) fn info(src: &ModelSource, target: &str, d: &Derived, ty: GgmlType, dims: &[usize]) -> Option<(GgmlType, Vec<usize>)> {
    use rocmforge_abi::transform as tr;
    let &[r, rows] = dims else { return None };
    let kv = kv_b_dims(src, target, r, rows).ok()?;
    match d.transform {
        tr::KV_B_TO_K_B => Some((if element_bytes(ty).is_some() { ty } else { GgmlType::F32 }, vec![kv.dn, r, kv.n_head])),
        tr::KV_B_TO_V_B => Some((ty, vec![r, kv.dv, kv.n_head])),
        _ => None,
    }
}

/// Bytes of one element of an unquantized type.
fn element_bytes(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::F32 => Some(4),
        GgmlType::F16 | GgmlType::BF16 => Some(2),
        _ => None,
    }
}

/// Load `target` by deriving it from its source weight `w`.
pub(crate) fn derive(src: &ModelSource, target: &str, d: &Derived, w: Weight) -> Result<Weight, RuntimeError> {
    use rocmforge_abi::transform as tr;
    let bad = |what: String| RuntimeError::Weight { name: target.to_string(), what };
    let &[r, rows] = w.dims.as_slice() else {
        return Err(bad(format!("source '{}' has dims {:?}, expected [kv_lora_rank, n_head x (dn + dv)]", d.source, w.dims)));
    };
    let kv = kv_b_dims(src, target, r, rows)?;
    let per = kv.dn + kv.dv;
    match d.transform {
        tr::KV_B_TO_V_B => {
            // Whole rows: a byte copy whatever the type.
            let row = w.ty.row_bytes(r as u64).ok_or_else(|| bad(format!("{} rows of {r} are not whole blocks", w.ty.name())))? as usize;
            let all = w.bytes.as_slice();
            let mut out = Vec::with_capacity(kv.n_head * kv.dv * row);
            for h in 0..kv.n_head {
                let first = h * per + kv.dn;
                out.extend_from_slice(&all[first * row..(first + kv.dv) * row]);
            }
            Ok(Weight { name: target.to_string(), ty: w.ty, dims: vec![r, kv.dv, kv.n_head], bytes: WeightBytes::Owned(out) })
        }
        tr::KV_B_TO_K_B => {
            // Transposed element by element; quantized rows are dequantized first.
            let (ty, es, bytes) = match element_bytes(w.ty) {
                Some(es) => (w.ty, es, w.bytes.as_slice().to_vec()),
                None => (GgmlType::F32, 4, w.to_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            let mut out = vec![0u8; kv.n_head * r * kv.dn * es];
            for h in 0..kv.n_head {
                for i in 0..kv.dn {
                    let src_row = (h * per + i) * r;
                    for c in 0..r {
                        let (from, to) = ((src_row + c) * es, ((h * r + c) * kv.dn + i) * es);
                        out[to..to + es].copy_from_slice(&bytes[from..from + es]);
                    }
                }
            }
            Ok(Weight { name: target.to_string(), ty, dims: vec![kv.dn, r, kv.n_head], bytes: WeightBytes::Owned(out) })
        }
        other => Err(bad(format!("load transform {other} does not derive a tensor"))),
    }
}

/// The derived tensors of a model: for each `gguf:` row of `rows` ((GGUF pattern, HF pattern,
/// transform)) and layer, the target when `has(target)` is false and `has(source)` is true.
pub(crate) fn plan<'a>(
    rows: impl Iterator<Item = (&'a str, &'a str, u32)>,
    n_layer: usize,
    has: impl Fn(&str) -> bool,
) -> std::collections::HashMap<String, Derived> {
    let mut out = std::collections::HashMap::new();
    for (gguf, hf, transform) in rows {
        let Some(source) = hf.strip_prefix(DERIVED_PREFIX) else { continue };
        let layers: Vec<Option<usize>> = if gguf.contains("{il}") { (0..n_layer).map(Some).collect() } else { vec![None] };
        for il in layers {
            let sub = |s: &str| il.map_or_else(|| s.to_string(), |i| s.replace("{il}", &i.to_string()));
            let (target, source) = (sub(gguf), sub(source));
            if !out.contains_key(&target) && !has(&target) && has(&source) {
                out.insert(target, Derived { source, transform });
            }
        }
    }
    out
}
