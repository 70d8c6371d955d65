//! Mixture of experts on the CPU: the MOE_ROUTE, MOE_GATE_UP and MOE_DOWN ops of the graph IR.
//!
//! ```text
//!   logits [n, n_expert] ─MOE_ROUTE─▶ route [n, 2k] = (w_0 .. w_{k-1}, id_0 .. id_{k-1})
//!   x [n, n_embd] + route ─MOE_GATE_UP─▶ h [n, k·n_ff]   slot s: act(x·gate_{id_s}) * (x·up_{id_s})
//!   h + route ─MOE_DOWN─▶ y [n, n_embd] = Σ_s w_s · (h_s · down_{id_s})
//! ```
//!
//! Only the selected experts run. Rows routed to the same expert are gathered into one matrix so
//! each expert's weights are read once per batch (the CPU analogue of ggml's `mul_mat_id`). Expert
//! `e` of a stacked GGUF tensor `[k_dim, n_out, n_expert]` is the contiguous byte range
//! `[e·n_out·row_bytes, (e+1)·n_out·row_bytes)`, an ordinary 2-D weight for `rocmforge_cpu::matmul`.
//!
//! Invariants: the graph checked that `route` is a MOE_ROUTE node of the same rows and `k`, so
//! every id is an integer in `[0, n_expert)` stored exactly in an f32; expert weights are 3-D with
//! `n_expert` as the outermost dim; per-expert biases (gpt-oss) are `[len, n_expert]` and are added
//! to each expert's projection before the activation (gate/up) or the weighting (down), as
//! transformers' `GptOssExperts` and llama.cpp's `build_moe_ffn` do. Routing follows transformers' `MixtralSparseMoeBlock` /
//! `Qwen2MoeSparseMoeBlock`: softmax over all experts in f32, top-k (ties: lower id first), then
//! optionally divide the k weights by their sum.

use rocmforge_cpu::{CpuError, ThreadPool};

use crate::graph::MoeAct;
use crate::source::Weight;

/// Softmax routing of each row: `out[r] = (w_0..w_{k-1}, id_0..id_{k-1})` (the first revision's
/// MOE_ROUTE; every gating is `moe_route::route`).
#[cfg(test)]
pub(crate) fn route(logits: &[f32], n_expert: usize, k: usize, renorm: bool, out: &mut [f32]) {
    let r = crate::graph::MoeRouting { sigmoid: false, renorm, bias: None, n_group: 0, n_group_used: 0, group_top2: false, scale: 1.0 };
    super::moe_route::route(logits, n_expert, k, &r, None, out)
}

/// For each expert, the (row, slot) pairs routed to it.
fn groups(route: &[f32], k: usize, n_expert: usize) -> Vec<Vec<(usize, usize)>> {
    let mut g = vec![Vec::new(); n_expert];
    for (r, row) in route.chunks_exact(2 * k).enumerate() {
        for s in 0..k {
            let e = row[k + s] as usize;
            if let Some(list) = g.get_mut(e) {
                list.push((r, s));
            }
        }
    }
    g
}

/// Bytes of expert `e` of a stacked weight `[k_dim, n_out, n_expert]`.
fn expert_bytes(w: &Weight, e: usize) -> Result<&[u8], CpuError> {
    let (k_dim, n_out) = (w.dims[0], w.dims[1]);
    let row =
        w.ty.row_bytes(k_dim as u64).ok_or(CpuError::NotBlockAligned { op: "moe", ty: w.ty.name(), k: k_dim, block: w.ty.block_size() })?
            as usize;
    let per = row * n_out;
    let all = w.bytes.as_slice();
    all.get(e * per..(e + 1) * per).ok_or(CpuError::BadLength { op: "moe", what: "expert weights", got: all.len(), want: (e + 1) * per })
}

fn n_expert(w: &Weight) -> usize {
    w.dims.get(2).copied().unwrap_or(1)
}

/// The stacked expert weights of MOE_GATE_UP and their optional per-expert biases
/// (`[n_ff, n_expert]` as f32: expert `e`'s bias is `[e·n_ff, (e+1)·n_ff)`).
pub(crate) struct Experts<'a> {
    pub gate: &'a Weight,
    pub up: &'a Weight,
    pub gate_b: Option<&'a [f32]>,
    pub up_b: Option<&'a [f32]>,
}

/// Add expert `e`'s slice of a per-expert bias `[len, n_expert]` to each `len`-row of `y`.
fn add_expert_bias(y: &mut [f32], bias: Option<&[f32]>, e: usize, len: usize) {
    if let Some(b) = bias {
        let be = &b[e * len..(e + 1) * len];
        for row in y.chunks_exact_mut(len) {
            row.iter_mut().zip(be).for_each(|(v, b)| *v += b);
        }
    }
}

/// MOE_GATE_UP: `out[r, s·n_ff..(s+1)·n_ff] = act(x_r·gate_e + gate_b_e, x_r·up_e + up_b_e)`,
/// `e` = id of slot `s`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_up(
    pool: &ThreadPool,
    x: &[f32],
    route: &[f32],
    k: usize,
    w: &Experts<'_>,
    n_ff: usize,
    act: MoeAct,
    out: &mut [f32],
) -> Result<(), CpuError> {
    let (gate, up) = (w.gate, w.up);
    let n_embd = gate.dims[0];
    let mut xs = Vec::new();
    let (mut g, mut u, mut a) = (Vec::new(), Vec::new(), Vec::new());
    for (e, pairs) in groups(route, k, n_expert(gate)).iter().enumerate() {
        let m = pairs.len();
        if m == 0 {
            continue;
        }
        xs.clear();
        for &(r, _) in pairs {
            xs.extend_from_slice(&x[r * n_embd..(r + 1) * n_embd]);
        }
        for buf in [&mut g, &mut u, &mut a] {
            buf.resize(m * n_ff, 0.0);
        }
        rocmforge_cpu::matmul(pool, gate.ty, expert_bytes(gate, e)?, n_ff, n_embd, &xs, m, &mut g)?;
        rocmforge_cpu::matmul(pool, up.ty, expert_bytes(up, e)?, n_ff, n_embd, &xs, m, &mut u)?;
        add_expert_bias(&mut g, w.gate_b, e, n_ff);
        add_expert_bias(&mut u, w.up_b, e, n_ff);
        match act {
            MoeAct::SwiGlu => rocmforge_cpu::swiglu(&g, &u, &mut a),
            MoeAct::GeGlu => rocmforge_cpu::geglu(&g, &u, &mut a),
            MoeAct::SwiGluOai { alpha, limit } => rocmforge_cpu::swiglu_oai(&g, &u, alpha, limit, &mut a),
        }
        for (i, &(r, s)) in pairs.iter().enumerate() {
            let dst = (r * k + s) * n_ff;
            out[dst..dst + n_ff].copy_from_slice(&a[i * n_ff..(i + 1) * n_ff]);
        }
    }
    Ok(())
}

/// MOE_DOWN: `out[r] = Σ_s w_s · (h[r, s·n_ff..(s+1)·n_ff] · down_{id_s} + bias_{id_s})`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn down(
    pool: &ThreadPool,
    h: &[f32],
    route: &[f32],
    k: usize,
    down: &Weight,
    bias: Option<&[f32]>,
    n_ff: usize,
    n_embd: usize,
    out: &mut [f32],
) -> Result<(), CpuError> {
    out.fill(0.0);
    let (mut hs, mut y) = (Vec::new(), Vec::new());
    for (e, pairs) in groups(route, k, n_expert(down)).iter().enumerate() {
        let m = pairs.len();
        if m == 0 {
            continue;
        }
        hs.clear();
        for &(r, s) in pairs {
            let src = (r * k + s) * n_ff;
            hs.extend_from_slice(&h[src..src + n_ff]);
        }
        y.resize(m * n_embd, 0.0);
        rocmforge_cpu::matmul(pool, down.ty, expert_bytes(down, e)?, n_embd, n_ff, &hs, m, &mut y)?;
        add_expert_bias(&mut y, bias, e, n_embd);
        for (i, &(r, s)) in pairs.iter().enumerate() {
            let w = route[r * 2 * k + s];
            for (o, v) in out[r * n_embd..(r + 1) * n_embd].iter_mut().zip(&y[i * n_embd..(i + 1) * n_embd]) {
                *o += w * v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::WeightBytes;
    use rocmforge_quant::GgmlType;

    fn stacked(name: &str, dims: [usize; 3], seed: usize) -> (Weight, Vec<f32>) {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i * 37 + seed * 101) % 61) as f32 - 30.0) / 40.0).collect();
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        (Weight { name: name.into(), ty: GgmlType::F32, dims: dims.to_vec(), bytes: WeightBytes::Owned(bytes) }, v)
    }

    /// The three MoE steps against a dense f64 evaluation: every token runs its k experts'
    /// FFNs one by one, weighted and summed. Seven tokens over four experts makes some experts
    /// serve several tokens (the grouped path) and possibly none (skipped). Run plain (SwiGLU, no
    /// biases) and as gpt-oss (per-expert biases, the clamped SwiGLU with a limit the values
    /// cross on both sides).
    fn check_moe_ffn(act: MoeAct, biased: bool) {
        let (n_tok, n_embd, n_ff, n_expert, k) = (7usize, 8usize, 5usize, 4usize, 2usize);
        let pool = ThreadPool::global();
        let x: Vec<f32> = (0..n_tok * n_embd).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
        let logits: Vec<f32> = (0..n_tok * n_expert).map(|i| ((i * 29 % 11) as f32 - 5.0) / 3.0).collect();
        let (gate, gv) = stacked("gate", [n_embd, n_ff, n_expert], 1);
        let (up, uv) = stacked("up", [n_embd, n_ff, n_expert], 2);
        let (wdown, dv) = stacked("down", [n_ff, n_embd, n_expert], 3);
        let bias = |len: usize, seed: usize| -> Option<Vec<f32>> {
            biased.then(|| (0..len * n_expert).map(|i| (((i * 7 + seed) % 13) as f32 - 6.0) / 5.0).collect())
        };
        let (gb, ub, db) = (bias(n_ff, 1), bias(n_ff, 2), bias(n_embd, 3));
        let mut r = vec![0f32; n_tok * 2 * k];
        route(&logits, n_expert, k, true, &mut r);
        let mut h = vec![0f32; n_tok * k * n_ff];
        let experts = Experts { gate: &gate, up: &up, gate_b: gb.as_deref(), up_b: ub.as_deref() };
        gate_up(pool, &x, &r, k, &experts, n_ff, act, &mut h).unwrap();
        let mut y = vec![0f32; n_tok * n_embd];
        down(pool, &h, &r, k, &wdown, db.as_deref(), n_ff, n_embd, &mut y).unwrap();
        let b_at = |b: &Option<Vec<f32>>, e: usize, len: usize, j: usize| b.as_ref().map_or(0.0, |b| b[e * len + j] as f64);
        let (mut clamped_gate, mut clamped_up) = (0, 0);
        for t in 0..n_tok {
            let xt = &x[t * n_embd..(t + 1) * n_embd];
            let mut want = vec![0f64; n_embd];
            for s in 0..k {
                let (w, e) = (r[t * 2 * k + s] as f64, r[t * 2 * k + k + s] as usize);
                // Expert e's row j of a [k_dim, n_out, n_expert] tensor starts at (e*n_out + j)*k_dim.
                let dot = |m: &[f32], k_dim: usize, n_out: usize, j: usize, v: &[f64]| -> f64 {
                    (0..k_dim).map(|i| m[(e * n_out + j) * k_dim + i] as f64 * v[i]).sum()
                };
                let xd: Vec<f64> = xt.iter().map(|&v| v as f64).collect();
                let act: Vec<f64> = (0..n_ff)
                    .map(|j| {
                        let g = dot(&gv, n_embd, n_ff, j, &xd) + b_at(&gb, e, n_ff, j);
                        let u = dot(&uv, n_embd, n_ff, j, &xd) + b_at(&ub, e, n_ff, j);
                        match act {
                            MoeAct::SwiGluOai { alpha, limit } => {
                                let (a, l) = (alpha as f64, limit as f64);
                                clamped_gate += (g > l) as usize;
                                clamped_up += (u.abs() > l) as usize;
                                let (g, u) = (g.min(l), u.clamp(-l, l));
                                g / (1.0 + (-a * g).exp()) * (u + 1.0)
                            }
                            _ => g / (1.0 + (-g).exp()) * u,
                        }
                    })
                    .collect();
                for (o, wo) in want.iter_mut().enumerate() {
                    *wo += w * (dot(&dv, n_ff, n_embd, o, &act) + b_at(&db, e, n_embd, o));
                }
            }
            for (o, &wo) in want.iter().enumerate() {
                let got = y[t * n_embd + o] as f64;
                assert!((got - wo).abs() < 1e-5 * (1.0 + wo.abs()), "{act:?} token {t} col {o}: {got} vs {wo}");
            }
        }
        if matches!(act, MoeAct::SwiGluOai { .. }) {
            assert!(clamped_gate > 0 && clamped_up > 0, "the limit clamps nothing ({clamped_gate}, {clamped_up})");
        }
    }

    /// MXFP4 experts (gpt-oss's released format) through the grouped expert path: the same as
    /// their dequantized values in F32, up to the Q8_0 rounding of the activations that the
    /// quantized matmul applies as llama.cpp does (about 0.5% per product, host/cpu/tests/matmul.rs;
    /// two products here). A mis-sliced expert (MXFP4's 17-byte blocks) would be O(1) off.
    #[test]
    fn mxfp4_experts_match_their_dequantized_values() {
        let (n_tok, n_embd, n_ff, n_expert, k) = (9usize, 64usize, 96usize, 4usize, 2usize);
        let pool = ThreadPool::global();
        let x: Vec<f32> = (0..n_tok * n_embd).map(|i| (((i * 7919) % 101) as f32 - 50.0) / 40.0).collect();
        let logits: Vec<f32> = (0..n_tok * n_expert).map(|i| ((i * 29 % 11) as f32 - 5.0) / 3.0).collect();
        let as_weight = |name: &str, ty: GgmlType, dims: [usize; 3], bytes: Vec<u8>| Weight {
            name: name.into(),
            ty,
            dims: dims.to_vec(),
            bytes: WeightBytes::Owned(bytes),
        };
        // (MXFP4, its dequantized F32) pairs of stacked weights.
        let pair = |name: &str, dims: [usize; 3], seed: usize| -> (Weight, Weight) {
            let (_, v) = stacked(name, dims, seed);
            let q = rocmforge_quant::quantize_to_vec(GgmlType::MXFP4, &v).unwrap();
            let d = rocmforge_quant::dequantize_to_vec(GgmlType::MXFP4, &q, v.len()).unwrap();
            (
                as_weight(name, GgmlType::MXFP4, dims, q),
                as_weight(name, GgmlType::F32, dims, d.iter().flat_map(|x| x.to_le_bytes()).collect()),
            )
        };
        let (gq, gf) = pair("gate", [n_embd, n_ff, n_expert], 1);
        let (uq, uf) = pair("up", [n_embd, n_ff, n_expert], 2);
        let (dq, df) = pair("down", [n_ff, n_embd, n_expert], 3);
        let mut r = vec![0f32; n_tok * 2 * k];
        route(&logits, n_expert, k, true, &mut r);
        let act = MoeAct::SwiGluOai { alpha: 1.702, limit: 7.0 };
        let run = |g: &Weight, u: &Weight, d: &Weight| -> Vec<f32> {
            let mut h = vec![0f32; n_tok * k * n_ff];
            gate_up(pool, &x, &r, k, &Experts { gate: g, up: u, gate_b: None, up_b: None }, n_ff, act, &mut h).unwrap();
            let mut y = vec![0f32; n_tok * n_embd];
            down(pool, &h, &r, k, d, None, n_ff, n_embd, &mut y).unwrap();
            y
        };
        let (got, want) = (run(&gq, &uq, &dq), run(&gf, &uf, &df));
        let num: f64 = got.iter().zip(&want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        eprintln!("MXFP4 experts vs their dequantized values: rel. error {rel:.2e}");
        assert!(den > 0.0 && rel < 1.5e-2, "MXFP4 experts vs their dequantized values: rel. error {rel:.2e}");
    }

    #[test]
    fn moe_ffn_matches_f64_reference() {
        check_moe_ffn(MoeAct::SwiGlu, false);
    }

    #[test]
    fn moe_ffn_with_expert_biases_and_clamped_swiglu_matches_f64_reference() {
        check_moe_ffn(MoeAct::SwiGluOai { alpha: 1.702, limit: 1.0 }, true);
    }

    /// Routing against an f64 evaluation of the same definition (softmax, top-k, renormalise).
    #[test]
    fn route_matches_f64_softmax_topk() {
        let (n_expert, k) = (6usize, 2usize);
        let logits: Vec<f32> = (0..3 * n_expert).map(|i| ((i * 7919) % 23) as f32 * 0.37 - 3.0).collect();
        for renorm in [false, true] {
            let mut out = vec![0f32; 3 * 2 * k];
            route(&logits, n_expert, k, renorm, &mut out);
            for (lrow, orow) in logits.chunks(n_expert).zip(out.chunks(2 * k)) {
                let z: f64 = lrow.iter().map(|&l| (l as f64).exp()).sum();
                let p: Vec<f64> = lrow.iter().map(|&l| (l as f64).exp() / z).collect();
                let mut idx: Vec<usize> = (0..n_expert).collect();
                idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                let norm: f64 = if renorm { idx[..k].iter().map(|&e| p[e]).sum() } else { 1.0 };
                for s in 0..k {
                    assert_eq!(orow[k + s] as usize, idx[s], "row {lrow:?}");
                    assert!((orow[s] as f64 - p[idx[s]] / norm).abs() < 1e-6, "{} vs {}", orow[s], p[idx[s]] / norm);
                }
            }
        }
    }
}
