//! LoRA adapters merged into a model's weights at load (Ollama's `ADAPTER`, llama.cpp's
//! `--lora`): for every adapted linear weight, `W' = W + scale * B·A`.
//!
//! [`resolve`] maps an adapter ([`rocmforge_model::lora`]) onto a [`ModelSource`]'s GGUF tensor
//! names and checks it against the model:
//!
//! ```text
//!   GGUF adapter  general.architecture must be the model's; names are GGUF names already
//!                 (llama.cpp's converter applied the load transforms to lora_b)
//!   PEFT adapter  HF module names go through the serving plugin's tensor table
//!                 (model.layers.{il}.self_attn.q_proj.weight -> blk.{il}.attn_q.weight), and
//!                 that row's load transform (PERMUTE_Q / PERMUTE_K) is applied to lora_b's rows:
//!                 permuting the rows of W + s·B·A is permuting the rows of W and of B
//!   both          the base tensor must exist and be 2-D [n_in, n_out] equal to the pair's; a
//!                 mismatch names the tensor, the adapter's shape and the model's
//! ```
//!
//! The result is a GGUF-space adapter: what the merge uses, and what `/api/create` stores
//! (converted PEFT adapters are written as GGUF adapters, as Ollama stores them).
//!
//! Merging ([`merged_weight`]): the base weight is dequantized to f32, every pair's
//! `scale * B·A` is added in f32, and the result is kept as **f32 when the base weight is f32
//! and f16 otherwise** (f16, bf16 and quantized bases: it is not requantized to the base's
//! type, whose rounding would swallow much of a small delta; f16 keeps it to ~1e-3 relative at
//! 2 bytes per weight). A merged value outside f16's range is an error naming the tensor.
//! Adapted tensors take that memory instead of the mapped file's; the others stay zero-copy.

use std::collections::HashMap;

use rocmforge_model::lora::{LoraAdapter, LoraFormat, LoraPair};
use rocmforge_quant::GgmlType;

use crate::plugin::Registry;
use crate::source::{ModelSource, Weight, WeightBytes};
use crate::RuntimeError;

fn err(adapter: &LoraAdapter, what: String) -> RuntimeError {
    RuntimeError::Lora { path: adapter.path.clone(), what }
}

/// HF tensor name -> (GGUF name, load transform), from the plugin serving `src`.
fn hf_names(src: &ModelSource, registry: &Registry) -> Result<HashMap<String, (String, u32)>, RuntimeError> {
    let plugin = registry.for_source(src)?;
    let n_layer = src.meta(&format!("{}.block_count", src.arch())).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let mut map = HashMap::new();
    for t in &plugin.tensors {
        // Config-derived tensors and stacked experts have no single HF weight to adapt.
        if t.hf.is_empty() || t.hf.starts_with("config:") || t.hf.contains("{xid}") {
            continue;
        }
        if t.hf.contains("{il}") {
            for il in 0..n_layer {
                let i = il.to_string();
                map.entry(t.hf.replace("{il}", &i)).or_insert((t.gguf.replace("{il}", &i), t.transform));
            }
        } else {
            map.entry(t.hf.clone()).or_insert((t.gguf.clone(), t.transform));
        }
    }
    Ok(map)
}

/// `adapter` in `src`'s GGUF tensor space, checked against its tensors (see the module header).
pub fn resolve(src: &ModelSource, adapter: &LoraAdapter, registry: &Registry) -> Result<LoraAdapter, RuntimeError> {
    let names = match adapter.format {
        LoraFormat::Gguf => {
            let arch = adapter.arch.as_deref().unwrap_or("");
            if arch != src.arch() {
                return Err(err(adapter, format!("it is for architecture '{arch}', the model is '{}'", src.arch())));
            }
            None
        }
        LoraFormat::Peft => Some(hf_names(src, registry)?),
    };
    let mut pairs = Vec::with_capacity(adapter.pairs.len());
    for p in &adapter.pairs {
        let (gguf, transform) = match &names {
            None => (p.target.clone(), rocmforge_abi::transform::NONE),
            Some(m) => m.get(&p.target).cloned().ok_or_else(|| {
                err(adapter, format!("tensor '{}' is not a weight of this {} model (wrong base model?)", p.target, src.arch()))
            })?,
        };
        let shown = if gguf == p.target { format!("'{gguf}'") } else { format!("'{}' ('{gguf}')", p.target) };
        let Some((_, dims)) = src.tensor_info(&gguf) else {
            return Err(err(adapter, format!("tensor {shown} does not exist in the base model (wrong base model?)")));
        };
        if dims != [p.n_in, p.n_out] {
            return Err(err(
                adapter,
                format!(
                    "tensor {shown}: the adapter's delta is [{} x {}] (out x in), the model's weight has GGUF dims {dims:?} (wrong base model?)",
                    p.n_out, p.n_in
                ),
            ));
        }
        let mut q = LoraPair { target: gguf.clone(), ..p.clone() };
        use rocmforge_abi::transform as tr;
        match transform {
            tr::NONE => {}
            tr::PERMUTE_Q | tr::PERMUTE_K => {
                // lora_b's rows are W's rows: GGUF dims [rank, n_out].
                let mut bytes: Vec<u8> = q.b.iter().flat_map(|x| x.to_le_bytes()).collect();
                src.apply_transform(&gguf, transform, GgmlType::F32, &[q.rank, q.n_out], &mut bytes)?;
                q.b = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            }
            other => {
                return Err(err(adapter, format!("tensor {shown} has load transform {other}, which a LoRA delta cannot go through")));
            }
        }
        pairs.push(q);
    }
    Ok(LoraAdapter {
        path: adapter.path.clone(),
        format: LoraFormat::Gguf,
        arch: Some(src.arch().to_string()),
        alpha: adapter.alpha,
        pairs,
    })
}

/// The type an adapted weight is kept in (see the module header).
pub(crate) fn merged_type(base: GgmlType) -> GgmlType {
    if base == GgmlType::F32 {
        GgmlType::F32
    } else {
        GgmlType::F16
    }
}

/// `base` plus every pair's delta, in [`merged_type`].
pub(crate) fn merged_weight(base: Weight, pairs: &[LoraPair]) -> Result<Weight, RuntimeError> {
    let mut w = base.to_f32()?;
    for p in pairs {
        p.merge_into(&mut w);
    }
    let ty = merged_type(base.ty);
    let bytes: Vec<u8> = if ty == GgmlType::F32 {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    } else {
        let mut out = Vec::with_capacity(w.len() * 2);
        for (i, x) in w.iter().enumerate() {
            let h = half::f16::from_f32(*x);
            if !h.is_finite() && x.is_finite() {
                return Err(RuntimeError::Weight {
                    name: base.name.clone(),
                    what: format!("LoRA-merged value {x} (element {i}) is outside the f16 range the merged weight is kept in"),
                });
            }
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    };
    Ok(Weight { name: base.name, ty, dims: base.dims, bytes: WeightBytes::Owned(bytes) })
}
