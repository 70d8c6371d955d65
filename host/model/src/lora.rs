//! LoRA adapters as files, read into one in-memory form ([`LoraAdapter`]), and written as
//! llama.cpp's GGUF adapter format.
//!
//! Two formats:
//!
//! * **GGUF adapter** (llama.cpp's `convert_lora_to_gguf.py`, what Ollama stores as an
//!   `application/vnd.ollama.image.adapter` layer): `general.type = "adapter"`,
//!   `adapter.type = "lora"`, `adapter.lora.alpha` (f32; 0 or absent = no scaling),
//!   `general.architecture` of the base model, and for every adapted base tensor `W` (GGUF name)
//!   the pair `W.lora_a` (GGUF dims `[n_in, r]`) and `W.lora_b` (`[r, n_out]`), in any tensor
//!   type. Base names are in GGUF space, so an architecture's load transforms (e.g. LLaMA's Q/K
//!   row permutation) are already applied to `lora_b`.
//! * **PEFT adapter directory**: `adapter_config.json` (`peft_type` LORA, `r`, `lora_alpha`,
//!   `use_rslora`, `alpha_pattern`) and `adapter_model.safetensors` with
//!   `base_model.model.<module>.lora_A.weight` (`[r, n_in]`) and `.lora_B.weight`
//!   (`[n_out, r]`). Base names are Hugging Face names; the runtime maps them (and their
//!   transforms) onto GGUF names (`rocmforge_runtime::lora`).
//!
//! In memory every pair is f32 row-major: `a` is `r` rows of `n_in`, `b` is `n_out` rows of
//! `r`, and the adapted weight is `W' = W + scale * B·A` (the `[n_out, n_in]` matrix of a
//! linear layer), with `scale = alpha / r` (PEFT's rsLoRA: `alpha / sqrt(r)`; a GGUF alpha of 0:
//! 1, as llama.cpp does).
//!
//! Refused, with the tensor named: DoRA, `fan_in_fan_out`, full tensors saved beside the
//! adapter (`modules_to_save`), LoRA on embeddings, norm vectors in the adapter (llama.cpp skips
//! them; merging without them would silently be another model), pairs missing a half, ranks
//! that disagree between `A` and `B`.
//!
//! Modelled on llama.cpp's `src/llama-adapter.cpp` (pairing, shape rules, alpha) and PEFT's
//! `LoraLayer` (scaling); our own code.

use std::path::{Path, PathBuf};

use rocmforge_quant::GgmlType;
use serde_json::Value;

use crate::gguf::{GgufFile, GgufValue, GgufWriter};
use crate::hf::{parse_safetensors_header, HfDtype};
use crate::ModelError;

/// Which vocabulary an adapter's base tensor names are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    /// GGUF names (`blk.0.attn_q.weight`), transforms applied.
    Gguf,
    /// Hugging Face names (`model.layers.0.self_attn.q_proj.weight`).
    Peft,
}

/// One adapted base tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    /// The base tensor's name, in the adapter's vocabulary ([`LoraFormat`]).
    pub target: String,
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    /// `rank` rows of `n_in`.
    pub a: Vec<f32>,
    /// `n_out` rows of `rank`.
    pub b: Vec<f32>,
    /// `W' = W + scale * B·A`.
    pub scale: f32,
}

impl LoraPair {
    /// `w` (`n_out` rows of `n_in`, f32) += `scale * B·A`, row-parallel. Each row takes its
    /// `rank` scaled rows of `A` in order (the same sum as PEFT's `W + (B @ A) * scale` up to
    /// f32 rounding order).
    pub fn merge_into(&self, w: &mut [f32]) {
        use rayon::prelude::*;
        let (n_in, rank) = (self.n_in, self.rank);
        if n_in == 0 || rank == 0 || w.len() != self.n_out * n_in {
            return;
        }
        w.par_chunks_mut(n_in).zip(self.b.par_chunks(rank)).for_each(|(row, brow)| {
            for (k, &bk) in brow.iter().enumerate() {
                let c = self.scale * bk;
                if c == 0.0 {
                    continue;
                }
                for (x, &y) in row.iter_mut().zip(&self.a[k * n_in..(k + 1) * n_in]) {
                    *x += c * y;
                }
            }
        });
    }
}

/// An adapter read from a file or directory.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub path: PathBuf,
    pub format: LoraFormat,
    /// `general.architecture` of a GGUF adapter (None for PEFT).
    pub arch: Option<String>,
    /// `adapter.lora.alpha` / `lora_alpha`.
    pub alpha: f32,
    pub pairs: Vec<LoraPair>,
}

/// GGUF keys of the adapter format (llama.cpp's `LLM_KV_ADAPTER_*`).
pub const KEY_TYPE: &str = "general.type";
pub const KEY_ADAPTER_TYPE: &str = "adapter.type";
pub const KEY_ALPHA: &str = "adapter.lora.alpha";

fn malformed(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::Malformed { path: path.to_path_buf(), what: what.into() }
}

fn bad_tensor(path: &Path, tensor: &str, what: impl Into<String>) -> ModelError {
    ModelError::BadTensor { path: path.to_path_buf(), tensor: tensor.to_string(), what: what.into() }
}

/// llama.cpp's scale rule for a GGUF adapter.
fn gguf_scale(alpha: f32, rank: usize) -> f32 {
    if alpha != 0.0 {
        alpha / rank as f32
    } else {
        1.0
    }
}

impl LoraAdapter {
    /// A GGUF adapter file, or a PEFT adapter directory.
    pub fn open(path: &Path) -> Result<LoraAdapter, ModelError> {
        if path.is_dir() {
            Self::open_peft(path)
        } else {
            Self::open_gguf(path)
        }
    }

    /// Whether a file is a GGUF LoRA adapter (`general.type = adapter`), without reading its
    /// tensors. Not a GGUF, or another type: false.
    pub fn is_gguf_adapter(path: &Path) -> bool {
        GgufFile::open(path).ok().is_some_and(|f| f.get(KEY_TYPE).and_then(|v| v.as_str()) == Some("adapter"))
    }

    pub fn open_gguf(path: &Path) -> Result<LoraAdapter, ModelError> {
        let f = GgufFile::open(path)?;
        let ty = f.opt_str(KEY_TYPE)?.unwrap_or("");
        if ty != "adapter" {
            return Err(malformed(path, format!("not a LoRA adapter: {KEY_TYPE} is {ty:?}, expected \"adapter\"")));
        }
        let aty = f.opt_str(KEY_ADAPTER_TYPE)?.unwrap_or("");
        if aty != "lora" {
            return Err(malformed(path, format!("{KEY_ADAPTER_TYPE} is {aty:?}, expected \"lora\"")));
        }
        let arch = f.architecture()?.to_string();
        let alpha = f.opt_f64(KEY_ALPHA)?.unwrap_or(0.0) as f32;
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(malformed(path, format!("{KEY_ALPHA} = {alpha} is not a finite, non-negative number")));
        }
        // Pair `<W>.lora_a` with `<W>.lora_b`, in file order of the first half seen.
        let mut halves: Vec<(String, Option<usize>, Option<usize>)> = Vec::new();
        for (i, t) in f.tensors().iter().enumerate() {
            let (base, is_a) = if let Some(b) = t.name.strip_suffix(".lora_a") {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(".lora_b") {
                (b, false)
            } else if t.name.ends_with("_norm.weight") {
                return Err(bad_tensor(path, &t.name, "norm vectors in a LoRA adapter are not supported"));
            } else {
                return Err(bad_tensor(path, &t.name, "not a LoRA tensor (expected a .lora_a or .lora_b suffix)"));
            };
            let slot = match halves.iter().position(|h| h.0 == base) {
                Some(p) => p,
                None => {
                    halves.push((base.to_string(), None, None));
                    halves.len() - 1
                }
            };
            let h = &mut halves[slot];
            let dup = if is_a { h.1.replace(i) } else { h.2.replace(i) };
            if dup.is_some() {
                return Err(bad_tensor(path, &t.name, "appears twice"));
            }
        }
        let mut pairs = Vec::with_capacity(halves.len());
        for (base, a, b) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad_tensor(path, &base, "the LoRA pair is missing its lora_a or lora_b half"));
            };
            if base.ends_with("token_embd.weight") {
                return Err(bad_tensor(path, &base, "LoRA on token embeddings is not supported"));
            }
            let (ta, tb) = (&f.tensors()[a], &f.tensors()[b]);
            if ta.dims.len() != 2 || tb.dims.len() != 2 {
                return Err(bad_tensor(path, &base, format!("lora_a {:?} and lora_b {:?} must both be 2-D", ta.dims, tb.dims)));
            }
            let (n_in, rank, n_out) = (ta.dims[0] as usize, ta.dims[1] as usize, tb.dims[1] as usize);
            if tb.dims[0] as usize != rank {
                return Err(bad_tensor(
                    path,
                    &base,
                    format!("lora_a is [{n_in}, {rank}] but lora_b is [{}, {n_out}]: ranks differ (lora_a not transposed?)", tb.dims[0]),
                ));
            }
            if rank == 0 {
                return Err(bad_tensor(path, &base, "rank 0"));
            }
            let deq = |t: &crate::gguf::TensorInfo| -> Result<Vec<f32>, ModelError> {
                rocmforge_quant::dequantize_to_vec(t.ty, f.tensor_data(t), t.n_elements() as usize)
                    .map_err(|e| bad_tensor(path, &t.name, e.to_string()))
            };
            pairs.push(LoraPair { target: base, rank, n_in, n_out, a: deq(ta)?, b: deq(tb)?, scale: gguf_scale(alpha, rank) });
        }
        if pairs.is_empty() {
            return Err(malformed(path, "the adapter has no LoRA tensors"));
        }
        Ok(LoraAdapter { path: path.to_path_buf(), format: LoraFormat::Gguf, arch: Some(arch), alpha, pairs })
    }

    /// A PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn open_peft(dir: &Path) -> Result<LoraAdapter, ModelError> {
        let cfg_path = dir.join("adapter_config.json");
        let bytes = std::fs::read(&cfg_path).map_err(|source| ModelError::Io { path: cfg_path.clone(), source })?;
        let cfg: Value = serde_json::from_slice(&bytes).map_err(|source| ModelError::Json { path: cfg_path.clone(), source })?;
        let cfg_err = |what: String| malformed(&cfg_path, what);
        if let Some(t) = cfg.get("peft_type").and_then(Value::as_str) {
            if !t.eq_ignore_ascii_case("lora") {
                return Err(cfg_err(format!("peft_type is {t:?}: only LORA adapters are supported")));
            }
        }
        let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("use_dora") {
            return Err(cfg_err("use_dora: DoRA adapters are not supported".into()));
        }
        if flag("fan_in_fan_out") {
            return Err(cfg_err("fan_in_fan_out: adapters of transposed (Conv1D) weights are not supported".into()));
        }
        let rslora = flag("use_rslora");
        let alpha =
            cfg.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| cfg_err("lora_alpha is missing or not a number".into()))? as f32;
        let alpha_pattern: Vec<(String, f32)> = match cfg.get("alpha_pattern") {
            Some(Value::Object(m)) => m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32))).collect(),
            _ => Vec::new(),
        };
        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() {
                " (adapter_model.bin is not supported: save it with safetensors)"
            } else {
                ""
            };
            return Err(malformed(dir, format!("no adapter_model.safetensors{hint}")));
        }
        let data = std::fs::read(&weights).map_err(|source| ModelError::Io { path: weights.clone(), source })?;
        let header = parse_safetensors_header(&weights, &data)?;
        // (module, A index, B index) where module is the base model's module name.
        let mut halves: Vec<(String, Option<usize>, Option<usize>)> = Vec::new();
        for (i, (t, _)) in header.tensors.iter().enumerate() {
            let name = t.name.strip_prefix("base_model.model.").unwrap_or(&t.name);
            if name.ends_with(".base_layer.weight") {
                // PEFT saves a targeted lm_head's base weight beside its pair: the base
                // model's own weight, not part of the delta (llama.cpp's converter skips it too).
                continue;
            }
            let half = [".lora_A.", ".lora_B."].iter().find_map(|m| name.find(m).map(|p| (p, *m == ".lora_A.")));
            let Some((pos, is_a)) = half else {
                let what = if name.contains("lora_embedding_") {
                    "LoRA on embeddings is not supported"
                } else {
                    "not a lora_A / lora_B tensor (full weights saved beside the adapter, e.g. modules_to_save, are not supported)"
                };
                return Err(bad_tensor(&weights, &t.name, what));
            };
            // `<module>.lora_A.weight` or `<module>.lora_A.<adapter name>.weight`.
            if !name.ends_with(".weight") {
                return Err(bad_tensor(&weights, &t.name, "expected a .weight tensor"));
            }
            let module = name[..pos].to_string();
            let slot = match halves.iter().position(|h| h.0 == module) {
                Some(p) => p,
                None => {
                    halves.push((module, None, None));
                    halves.len() - 1
                }
            };
            let dup = if is_a { halves[slot].1.replace(i) } else { halves[slot].2.replace(i) };
            if dup.is_some() {
                return Err(bad_tensor(&weights, &t.name, "a second tensor for the same LoRA half"));
            }
        }
        let read = |i: usize| -> Result<(Vec<usize>, Vec<f32>), ModelError> {
            let (t, range) = &header.tensors[i];
            let bytes = &data[range.start as usize..range.end as usize];
            let v: Vec<f32> = match t.dtype {
                HfDtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                HfDtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                HfDtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                ref other => {
                    return Err(ModelError::UnsupportedDtype {
                        path: weights.clone(),
                        tensor: t.name.clone(),
                        dtype: other.name().to_string(),
                    })
                }
            };
            Ok((t.shape.iter().map(|&d| d as usize).collect(), v))
        };
        let mut pairs = Vec::with_capacity(halves.len());
        for (module, a, b) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad_tensor(&weights, &module, "the LoRA pair is missing its lora_A or lora_B half"));
            };
            let ((sa, va), (sb, vb)) = (read(a)?, read(b)?);
            if sa.len() != 2 || sb.len() != 2 {
                return Err(bad_tensor(&weights, &module, format!("lora_A {sa:?} and lora_B {sb:?} must both be 2-D")));
            }
            let (rank, n_in, n_out) = (sa[0], sa[1], sb[0]);
            if sb[1] != rank || rank == 0 {
                return Err(bad_tensor(&weights, &module, format!("lora_A is {sa:?} but lora_B is {sb:?}: ranks differ")));
            }
            // PEFT's per-module alpha (`alpha_pattern`, keys matched as a suffix of the module name).
            let a_t = alpha_pattern.iter().find(|(k, _)| module == *k || module.ends_with(&format!(".{k}"))).map_or(alpha, |(_, v)| *v);
            let scale = if rslora { a_t / (rank as f32).sqrt() } else { a_t / rank as f32 };
            pairs.push(LoraPair { target: format!("{module}.weight"), rank, n_in, n_out, a: va, b: vb, scale });
        }
        if pairs.is_empty() {
            return Err(malformed(&weights, "the adapter has no LoRA tensors"));
        }
        Ok(LoraAdapter { path: dir.to_path_buf(), format: LoraFormat::Peft, arch: None, alpha, pairs })
    }

    /// Write this adapter (GGUF names, f32 tensors) as a llama.cpp GGUF adapter for
    /// architecture `arch`. `adapter.lora.alpha` is this adapter's alpha; a pair whose scale is
    /// not what llama.cpp derives from it (`alpha / r`: rsLoRA, `alpha_pattern`) has the ratio
    /// folded into its `lora_b`, so every reader gets the same `W'`.
    pub fn write_gguf(&self, arch: &str, out: &Path) -> Result<(), ModelError> {
        if self.format != LoraFormat::Gguf {
            return Err(malformed(&self.path, "only an adapter with GGUF tensor names can be written as a GGUF adapter"));
        }
        let mut w = GgufWriter::new();
        w.set("general.architecture", GgufValue::Str(arch.to_string()));
        w.set(KEY_TYPE, GgufValue::Str("adapter".into()));
        w.set(KEY_ADAPTER_TYPE, GgufValue::Str("lora".into()));
        w.set(KEY_ALPHA, GgufValue::F32(self.alpha));
        let mut data: Vec<Vec<f32>> = Vec::with_capacity(self.pairs.len() * 2);
        for p in &self.pairs {
            w.add_tensor_info(format!("{}.lora_a", p.target), vec![p.n_in as u64, p.rank as u64], GgmlType::F32)?;
            w.add_tensor_info(format!("{}.lora_b", p.target), vec![p.rank as u64, p.n_out as u64], GgmlType::F32)?;
            let implied = gguf_scale(self.alpha, p.rank);
            let fold = p.scale / implied;
            data.push(p.a.clone());
            data.push(if fold == 1.0 { p.b.clone() } else { p.b.iter().map(|x| x * fold).collect() });
        }
        w.write_file(out, |i| Ok::<Vec<u8>, ModelError>(data[i].iter().flat_map(|x| x.to_le_bytes()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(target: &str, rank: usize, n_in: usize, n_out: usize, scale: f32) -> LoraPair {
        let a = (0..rank * n_in).map(|i| (i as f32 * 0.37).sin()).collect();
        let b = (0..n_out * rank).map(|i| (i as f32 * 0.91).cos()).collect();
        LoraPair { target: target.into(), rank, n_in, n_out, a, b, scale }
    }

    #[test]
    fn merge_matches_f64_reference() {
        let p = pair("w", 3, 5, 4, 0.75);
        let base: Vec<f32> = (0..20).map(|i| i as f32 * 0.1).collect();
        let mut w = base.clone();
        p.merge_into(&mut w);
        for o in 0..4 {
            for i in 0..5 {
                let d: f64 = (0..3).map(|k| p.b[o * 3 + k] as f64 * p.a[k * 5 + i] as f64).sum();
                let want = base[o * 5 + i] as f64 + 0.75 * d;
                assert!((w[o * 5 + i] as f64 - want).abs() < 1e-5, "({o},{i})");
            }
        }
    }

    #[test]
    fn gguf_roundtrip_folds_scales_llama_cpp_cannot_express() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.gguf");
        let ad = LoraAdapter {
            path: out.clone(),
            format: LoraFormat::Gguf,
            arch: Some("llama".into()),
            alpha: 8.0,
            pairs: vec![pair("blk.0.attn_q.weight", 4, 6, 5, 2.0), pair("blk.0.attn_v.weight", 2, 6, 3, 0.5)],
        };
        ad.write_gguf("llama", &out).unwrap();
        assert!(LoraAdapter::is_gguf_adapter(&out));
        let back = LoraAdapter::open(&out).unwrap();
        assert_eq!(back.arch.as_deref(), Some("llama"));
        assert_eq!(back.alpha, 8.0);
        assert_eq!(back.pairs.len(), 2);
        for (p, q) in ad.pairs.iter().zip(&back.pairs) {
            assert_eq!((p.target.as_str(), p.rank, p.n_in, p.n_out), (q.target.as_str(), q.rank, q.n_in, q.n_out));
            assert_eq!(p.a, q.a);
            // scale * B is what matters.
            for (x, y) in p.b.iter().zip(&q.b) {
                assert!((p.scale * x - q.scale * y).abs() < 1e-6, "{} {x} {y}", p.target);
            }
        }
        assert_eq!(back.pairs[0].scale, 2.0);
        assert_eq!(back.pairs[1].scale, 4.0);
    }

    #[test]
    fn gguf_shape_and_pair_errors_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, tensors: &[(&str, Vec<u64>)], ty: &str| -> PathBuf {
            let p = dir.path().join(name);
            let mut w = GgufWriter::new();
            w.set("general.architecture", GgufValue::Str("llama".into()));
            w.set(KEY_TYPE, GgufValue::Str(ty.into()));
            w.set(KEY_ADAPTER_TYPE, GgufValue::Str("lora".into()));
            let mut sizes = Vec::new();
            for (n, d) in tensors {
                w.add_tensor_info(*n, d.clone(), GgmlType::F32).unwrap();
                sizes.push(d.iter().product::<u64>() as usize * 4);
            }
            w.write_file(&p, |i| Ok::<Vec<u8>, ModelError>(vec![0u8; sizes[i]])).unwrap();
            p
        };
        let e = LoraAdapter::open(&write("m.gguf", &[("x.lora_a", vec![4, 2])], "model")).unwrap_err().to_string();
        assert!(e.contains("not a LoRA adapter"), "{e}");
        let e = LoraAdapter::open(&write("h.gguf", &[("blk.0.attn_q.weight.lora_a", vec![4, 2])], "adapter")).unwrap_err().to_string();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("missing"), "{e}");
        let e = LoraAdapter::open(&write(
            "r.gguf",
            &[("blk.0.attn_q.weight.lora_a", vec![4, 2]), ("blk.0.attn_q.weight.lora_b", vec![3, 4])],
            "adapter",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("ranks differ"), "{e}");
        let e = LoraAdapter::open(&write("n.gguf", &[("blk.0.attn_norm.weight", vec![4])], "adapter")).unwrap_err().to_string();
        assert!(e.contains("blk.0.attn_norm.weight") && e.contains("norm"), "{e}");
    }

    #[test]
    fn peft_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = LoraAdapter::open_peft(dir.path()).unwrap_err().to_string();
        assert!(e.contains("adapter_config.json"), "{e}");
        std::fs::write(dir.path().join("adapter_config.json"), r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"use_dora":true}"#).unwrap();
        let e = LoraAdapter::open_peft(dir.path()).unwrap_err().to_string();
        assert!(e.contains("DoRA"), "{e}");
        std::fs::write(dir.path().join("adapter_config.json"), r#"{"peft_type":"LORA","r":4,"lora_alpha":8}"#).unwrap();
        std::fs::write(dir.path().join("adapter_model.bin"), b"x").unwrap();
        let e = LoraAdapter::open_peft(dir.path()).unwrap_err().to_string();
        assert!(e.contains("adapter_model.safetensors") && e.contains("adapter_model.bin"), "{e}");
    }
}
