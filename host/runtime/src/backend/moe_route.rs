//! MOE_ROUTE on the CPU: from router logits to the k chosen experts of each row and their
//! weights, for every gating the graph IR defines ([`MoeRouting`]).
//!
//! ```text
//!   logits ─ softmax | sigmoid ─▶ scores ──────────────────────────────┐ (weights: unbiased)
//!            scores + bias? ─▶ selection ─ group-limited? ─ top-k ids ─┴▶ w_s = scores[id_s]
//!                                                    ─ renormalise? ─ × scale ─▶ (w_0..w_{k-1}, id_0..id_{k-1})
//! ```
//!
//! Definitions, as transformers' routers (read for facts): softmax over all experts in f32 with
//! an f64 sum (`Qwen2MoeSparseMoeBlock`, Mixtral); sigmoid per expert (`DeepseekV3TopkRouter`);
//! the selection bias (`e_score_correction_bias`, GGUF `exp_probs_b`) moves the choice only;
//! group-limited choice: experts in `n_group` equal groups, a group scored by its best selection
//! score (DeepSeek-V2 `group_limited_greedy`) or the sum of its best two (DeepSeek-V3
//! `noaux_tc`, llama.cpp's `build_moe_ffn` for every gating), the best `n_group_used` groups
//! kept and the others' experts excluded; top-k over the selection, ties to the lower id (a
//! stable sort), groups likewise; the k weights renormalised to sum 1 when asked, then times the
//! scale (`routed_scaling_factor`). The softmax path without groups, bias or scale is bit for bit
//! the original MOE_ROUTE (a test holds it to the f64 definition).

use crate::graph::MoeRouting;

/// Route every row of `logits` (`n_expert` columns) into `out` (`2k` columns per row:
/// `k` weights, then `k` expert ids as floats). `bias`: the selection bias' values when
/// `r.bias` is set. The graph checked the grouping (`n_expert % n_group == 0`, enough experts in
/// the kept groups for k).
pub(crate) fn route(logits: &[f32], n_expert: usize, k: usize, r: &MoeRouting, bias: Option<&[f32]>, out: &mut [f32]) {
    let mut probs = vec![0f32; n_expert];
    let mut sel = vec![0f32; n_expert];
    let mut order: Vec<usize> = (0..n_expert).collect();
    let groups = if r.n_group > 1 { r.n_group } else { 0 };
    let per_group = n_expert.checked_div(groups).unwrap_or(0);
    let mut group_order: Vec<usize> = (0..groups).collect();
    let mut group_score = vec![0f32; groups];
    for (lrow, orow) in logits.chunks_exact(n_expert).zip(out.chunks_exact_mut(2 * k)) {
        if r.sigmoid {
            for (p, &l) in probs.iter_mut().zip(lrow) {
                *p = 1.0 / (1.0 + (-l).exp());
            }
        } else {
            let max = lrow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f64;
            for (p, &l) in probs.iter_mut().zip(lrow) {
                *p = (l - max).exp();
                sum += *p as f64;
            }
            for p in probs.iter_mut() {
                *p = (*p as f64 / sum) as f32;
            }
        }
        sel.copy_from_slice(&probs);
        if let Some(b) = bias {
            sel.iter_mut().zip(b).for_each(|(s, &b)| *s += b);
        }
        if groups > 0 {
            for (g, score) in group_score.iter_mut().enumerate() {
                let members = &sel[g * per_group..(g + 1) * per_group];
                *score = if r.group_top2 {
                    // The two largest (the graph checked a group has two).
                    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                    for &v in members {
                        if v > a {
                            (a, b) = (v, a);
                        } else if v > b {
                            b = v;
                        }
                    }
                    a + b
                } else {
                    members.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                };
            }
            group_order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
            group_order.sort_by(|&a, &b| group_score[b].total_cmp(&group_score[a]));
            for &g in &group_order[r.n_group_used..] {
                sel[g * per_group..(g + 1) * per_group].fill(f32::NEG_INFINITY);
            }
        }
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        // Stable sort: equal scores keep the lower expert id first.
        order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]));
        let top = &order[..k];
        let norm = if r.renorm { top.iter().map(|&e| probs[e] as f64).sum::<f64>() } else { 1.0 };
        for (s, &e) in top.iter().enumerate() {
            orow[s] = (probs[e] as f64 / norm * r.scale as f64) as f32;
            orow[k + s] = e as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(sigmoid: bool, renorm: bool) -> MoeRouting {
        MoeRouting { sigmoid, renorm, bias: None, n_group: 0, n_group_used: 0, group_top2: false, scale: 1.0 }
    }

    /// The definition in f64: scores, biased selection, groups, top-k, weights.
    fn reference(l: &[f32], k: usize, r: &MoeRouting, bias: Option<&[f32]>) -> (Vec<f64>, Vec<usize>) {
        let n = l.len();
        let p: Vec<f64> = if r.sigmoid {
            l.iter().map(|&v| 1.0 / (1.0 + (-(v as f64)).exp())).collect()
        } else {
            let m = l.iter().map(|&v| v as f64).fold(f64::MIN, f64::max);
            let e: Vec<f64> = l.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        let mut sel: Vec<f64> = (0..n).map(|i| p[i] + bias.map_or(0.0, |b| b[i] as f64)).collect();
        if r.n_group > 1 {
            let per = n / r.n_group;
            let score = |g: usize| {
                let mut m: Vec<f64> = sel[g * per..(g + 1) * per].to_vec();
                m.sort_by(|a, b| b.total_cmp(a));
                if r.group_top2 {
                    m[0] + m[1]
                } else {
                    m[0]
                }
            };
            let mut gs: Vec<usize> = (0..r.n_group).collect();
            let scores: Vec<f64> = gs.iter().map(|&g| score(g)).collect();
            gs.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            for &g in &gs[r.n_group_used..] {
                sel[g * per..(g + 1) * per].fill(f64::NEG_INFINITY);
            }
        }
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]));
        let top = idx[..k].to_vec();
        let norm: f64 = if r.renorm { top.iter().map(|&e| p[e]).sum() } else { 1.0 };
        (top.iter().map(|&e| p[e] / norm * r.scale as f64).collect(), top)
    }

    fn check(l: &[f32], n_expert: usize, k: usize, r: &MoeRouting, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0f32; l.len() / n_expert * 2 * k];
        route(l, n_expert, k, r, bias, &mut out);
        for (row, orow) in l.chunks(n_expert).zip(out.chunks(2 * k)) {
            let (w, ids) = reference(row, k, r, bias);
            for s in 0..k {
                assert_eq!(orow[k + s] as usize, ids[s], "{r:?}: slot {s} of row {row:?}");
                assert!((orow[s] as f64 - w[s]).abs() < 1e-6 * (1.0 + w[s].abs()), "{r:?}: weight {s}: {} vs {}", orow[s], w[s]);
            }
        }
        out
    }

    #[test]
    fn every_gating_against_its_f64_definition() {
        let (n_expert, k) = (8usize, 3usize);
        let logits: Vec<f32> = (0..5 * n_expert).map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0).collect();
        let bias: Vec<f32> = (0..n_expert).map(|i| ((i * 5 % 7) as f32 - 3.0) / 10.0).collect();
        for sigmoid in [false, true] {
            for renorm in [false, true] {
                check(&logits, n_expert, k, &routing(sigmoid, renorm), None);
                check(&logits, n_expert, k, &MoeRouting { scale: 2.5, bias: Some(0), ..routing(sigmoid, renorm) }, Some(&bias));
                for group_top2 in [false, true] {
                    let r = MoeRouting { n_group: 4, n_group_used: 2, group_top2, scale: 1.5, ..routing(sigmoid, renorm) };
                    check(&logits, n_expert, k, &r, Some(&bias));
                    check(&logits, n_expert, k, &r, None);
                }
            }
        }
    }

    /// Groups change the choice where the best experts sit in one group: with groups of two and
    /// one group kept, only that group's experts can be chosen; the bias moves the choice but not
    /// the weights.
    #[test]
    fn groups_and_bias_change_the_choice_as_defined() {
        // Experts 0..4 in two groups {0,1}, {2,3}; logits favour 0 and 2, group {2,3} sums higher.
        let l = [3.0f32, -4.0, 2.5, 2.0];
        let plain = check(&l, 4, 2, &routing(true, false), None);
        assert_eq!((plain[2], plain[3]), (0.0, 2.0));
        let grouped = check(&l, 4, 2, &MoeRouting { n_group: 2, n_group_used: 1, group_top2: true, ..routing(true, false) }, None);
        assert_eq!((grouped[2], grouped[3]), (2.0, 3.0), "top-two sum keeps group {{2, 3}}");
        let by_max = check(&l, 4, 2, &MoeRouting { n_group: 2, n_group_used: 1, ..routing(true, false) }, None);
        assert_eq!((by_max[2], by_max[3]), (0.0, 1.0), "the max keeps group {{0, 1}}");
        let bias = [0.0f32, 0.0, 0.0, 5.0];
        let biased = check(&l, 4, 2, &MoeRouting { bias: Some(0), ..routing(true, false) }, Some(&bias));
        assert_eq!((biased[2], biased[3]), (3.0, 0.0));
        assert_eq!(biased[0], 1.0 / (1.0 + (-2.0f32).exp()), "the weight is the unbiased score");
    }
}
