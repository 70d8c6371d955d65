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
//! `n_expert` as the outermost dim. Routing follows transformers' `MixtralSparseMoeBlock` /
//! `Qwen2MoeSparseMoeBlock`: softmax over all experts in f32, top-k (ties: lower id first), then
//! optionally divide the k weights by their sum.

use rocmforge_cpu::{CpuError, ThreadPool};

use crate::source::Weight;

/// Routing of each row: `out[r] = (w_0..w_{k-1}, id_0..id_{k-1})`.
pub(crate) fn route(logits: &[f32], n_expert: usize, k: usize, renorm: bool, out: &mut [f32]) {
    let mut probs = vec![0f32; n_expert];
    let mut order: Vec<usize> = (0..n_expert).collect();
    for (lrow, orow) in logits.chunks_exact(n_expert).zip(out.chunks_exact_mut(2 * k)) {
        let max = lrow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for (p, &l) in probs.iter_mut().zip(lrow) {
            *p = (l - max).exp();
            sum += *p as f64;
        }
        for p in probs.iter_mut() {
            *p = (*p as f64 / sum) as f32;
        }
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        // Stable sort: equal probabilities keep the lower expert id first.
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top = &order[..k];
        let norm = if renorm { top.iter().map(|&e| probs[e] as f64).sum::<f64>() } else { 1.0 };
        for (s, &e) in top.iter().enumerate() {
            orow[s] = (probs[e] as f64 / norm) as f32;
            orow[k + s] = e as f32;
        }
    }
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

/// MOE_GATE_UP: `out[r, s·n_ff..(s+1)·n_ff] = act(x_r·gate_e) * (x_r·up_e)`, `e` = id of slot `s`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_up(
    pool: &ThreadPool,
    x: &[f32],
    route: &[f32],
    k: usize,
    gate: &Weight,
    up: &Weight,
    n_ff: usize,
    geglu: bool,
    out: &mut [f32],
) -> Result<(), CpuError> {
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
        if geglu {
            rocmforge_cpu::geglu(&g, &u, &mut a);
        } else {
            rocmforge_cpu::swiglu(&g, &u, &mut a);
        }
        for (i, &(r, s)) in pairs.iter().enumerate() {
            let dst = (r * k + s) * n_ff;
            out[dst..dst + n_ff].copy_from_slice(&a[i * n_ff..(i + 1) * n_ff]);
        }
    }
    Ok(())
}

/// MOE_DOWN: `out[r] = Σ_s w_s · (h[r, s·n_ff..(s+1)·n_ff] · down_{id_s})`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn down(
    pool: &ThreadPool,
    h: &[f32],
    route: &[f32],
    k: usize,
    down: &Weight,
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
    /// SwiGLU FFNs one by one, weighted and summed. Seven tokens over four experts makes some
    /// experts serve several tokens (the grouped path) and possibly none (skipped).
    #[test]
    fn moe_ffn_matches_f64_reference() {
        let (n_tok, n_embd, n_ff, n_expert, k) = (7usize, 8usize, 5usize, 4usize, 2usize);
        let pool = ThreadPool::global();
        let x: Vec<f32> = (0..n_tok * n_embd).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
        let logits: Vec<f32> = (0..n_tok * n_expert).map(|i| ((i * 29 % 11) as f32 - 5.0) / 3.0).collect();
        let (gate, gv) = stacked("gate", [n_embd, n_ff, n_expert], 1);
        let (up, uv) = stacked("up", [n_embd, n_ff, n_expert], 2);
        let (wdown, dv) = stacked("down", [n_ff, n_embd, n_expert], 3);
        let mut r = vec![0f32; n_tok * 2 * k];
        route(&logits, n_expert, k, true, &mut r);
        let mut h = vec![0f32; n_tok * k * n_ff];
        gate_up(pool, &x, &r, k, &gate, &up, n_ff, false, &mut h).unwrap();
        let mut y = vec![0f32; n_tok * n_embd];
        down(pool, &h, &r, k, &wdown, n_ff, n_embd, &mut y).unwrap();
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
                        let g = dot(&gv, n_embd, n_ff, j, &xd);
                        g / (1.0 + (-g).exp()) * dot(&uv, n_embd, n_ff, j, &xd)
                    })
                    .collect();
                for (o, wo) in want.iter_mut().enumerate() {
                    *wo += w * dot(&dv, n_ff, n_embd, o, &act);
                }
            }
            for (o, &wo) in want.iter().enumerate() {
                let got = y[t * n_embd + o] as f64;
                assert!((got - wo).abs() < 1e-5 * (1.0 + wo.abs()), "token {t} col {o}: {got} vs {wo}");
            }
        }
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
