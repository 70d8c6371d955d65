//! Norms, RoPE (both styles, YaRN, freq_factors), activations, GLUs, softcap, softmax and the
//! element-wise ops against f64 references written here from the published formulas
//! (ggml `ops.cpp` semantics: YaRN ramp on integer i0/2, mscale *= 1 + 0.1 ln(1/freq_scale),
//! corr dims floor/ceil clamped to [0, n_dims-1]).

#![allow(clippy::needless_range_loop)]

mod common;

use common::{max_abs, Rng};
use rocmforge_cpu::*;

#[test]
fn rms_norm_matches_f64() {
    let mut rng = Rng::new(1);
    let (n, rows) = (96, 5);
    let x = rng.vec(n * rows, 3.0);
    let w = rng.vec(n, 1.0);
    for wopt in [None, Some(&w[..])] {
        let mut out = vec![0f32; n * rows];
        rms_norm(&x, wopt, 1e-5, n, &mut out);
        let mut want = vec![0f64; n * rows];
        for r in 0..rows {
            let xr = &x[r * n..(r + 1) * n];
            let ms: f64 = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
            for i in 0..n {
                want[r * n + i] = xr[i] as f64 / (ms + 1e-5).sqrt() * wopt.map_or(1.0, |w| w[i] as f64);
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(max_abs(&out, &want) <= 1e-6 * scale, "rms_norm err {}", max_abs(&out, &want));
    }
}

#[test]
fn layer_norm_matches_f64() {
    let mut rng = Rng::new(2);
    let (n, rows) = (80, 4);
    let mut x = rng.vec(n * rows, 2.0);
    for v in x.iter_mut() {
        *v += 5.0; // a large mean, so a missing subtraction shows
    }
    let w = rng.vec(n, 1.0);
    let b = rng.vec(n, 1.0);
    let mut out = vec![0f32; n * rows];
    layer_norm(&x, Some(&w), Some(&b), 1e-5, n, &mut out);
    let mut want = vec![0f64; n * rows];
    for r in 0..rows {
        let xr: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        let mean = xr.iter().sum::<f64>() / n as f64;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        for i in 0..n {
            want[r * n + i] = (xr[i] - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64;
        }
    }
    assert!(max_abs(&out, &want) <= 2e-5, "layer_norm err {}", max_abs(&out, &want));
}

/// f64 rope following the formulas (exact powers instead of ggml's repeated f32 products).
fn rope_ref(x: &[f32], n_tokens: usize, n_head: usize, hd: usize, pos: &[i32], p: &RopeParams) -> Vec<f64> {
    let nd = p.n_rot;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (base, fs, ext) = (p.freq_base as f64, p.freq_scale as f64, p.ext_factor as f64);
    let corr = |beta: f64| nd as f64 * (p.n_ctx_orig as f64 / (beta * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
    // transformers' `find_correction_range`: rounded outward unless `truncate = False`.
    let (lo, hi) = if p.yarn_exact {
        (corr(p.beta_fast as f64), corr(p.beta_slow as f64))
    } else {
        (corr(p.beta_fast as f64).floor(), corr(p.beta_slow as f64).ceil())
    };
    let (lo, hi) = (lo.max(0.0), hi.min(nd as f64 - 1.0));
    for t in 0..n_tokens {
        for h in 0..n_head {
            let v = &mut out[(t * n_head + h) * hd..(t * n_head + h + 1) * hd];
            for j in 0..nd / 2 {
                let ff = p.freq_factors.as_ref().map_or(1.0, |f| f[j] as f64);
                let extrap = pos[t] as f64 * base.powf(-2.0 * j as f64 / nd as f64) / ff;
                let interp = fs * extrap;
                let (mut theta, mut ms) = (interp, p.attn_factor as f64);
                if ext != 0.0 {
                    let y = (j as f64 - lo) / (hi - lo).max(0.001);
                    let mix = (1.0 - y.clamp(0.0, 1.0)) * ext;
                    theta = interp * (1.0 - mix) + extrap * mix;
                    ms *= 1.0 + 0.1 * (1.0 / fs).ln();
                }
                let (c, s) = (theta.cos() * ms, theta.sin() * ms);
                let (a, b) = if p.neox { (j, j + nd / 2) } else { (2 * j, 2 * j + 1) };
                let (x0, x1) = (v[a], v[b]);
                v[a] = x0 * c - x1 * s;
                v[b] = x0 * s + x1 * c;
            }
        }
    }
    out
}

#[test]
fn rope_matches_f64_all_variants() {
    let mut rng = Rng::new(3);
    let (n_tokens, n_head, hd) = (5, 3, 64);
    let positions = [0i32, 1, 7, 100, 300];
    let ff: Vec<f32> = (0..24).map(|i| 1.0 + (i % 5) as f32).collect();
    let variants = [
        ("normal", RopeParams { n_rot: 64, neox: false, ..Default::default() }),
        ("neox", RopeParams { n_rot: 64, neox: true, freq_base: 500000.0, ..Default::default() }),
        ("partial neox", RopeParams { n_rot: 32, neox: true, ..Default::default() }),
        ("linear", RopeParams { n_rot: 64, freq_scale: 0.25, ..Default::default() }),
        ("yarn", RopeParams { n_rot: 64, neox: true, freq_scale: 0.25, ext_factor: 1.0, n_ctx_orig: 4096, ..Default::default() }),
        ("freq_factors", RopeParams { n_rot: 48, neox: true, freq_factors: Some(ff.clone()), ..Default::default() }),
        // gpt-oss: θ 150000, YaRN ×32 from 4096, correction range [8.09, 17.4] left unrounded.
        (
            "yarn exact",
            RopeParams {
                n_rot: 64,
                neox: true,
                freq_base: 150000.0,
                freq_scale: 1.0 / 32.0,
                ext_factor: 1.0,
                n_ctx_orig: 4096,
                yarn_exact: true,
                ..Default::default()
            },
        ),
    ];
    for (name, p) in variants {
        let x = rng.vec(n_tokens * n_head * hd, 1.0);
        let mut y = x.clone();
        rope(&mut y, n_tokens, n_head, hd, &positions, &p);
        let want = rope_ref(&x, n_tokens, n_head, hd, &positions, &p);
        // ggml advances theta by repeated f32 products: error grows like pos * n_rot * 2^-24.
        for t in 0..n_tokens {
            let bound = 4e-6 * (1.0 + positions[t] as f64) * 8.0;
            let s = t * n_head * hd..(t + 1) * n_head * hd;
            let err = max_abs(&y[s.clone()], &want[s]);
            assert!(err <= bound, "{name} token {t} (pos {}): err {err} > {bound}", positions[t]);
        }
        // Unrotated tail dims are untouched.
        for i in p.n_rot..hd {
            assert_eq!(y[i], x[i], "{name}: dim {i} beyond n_rot changed");
        }
        // Rotation (without YaRN mscale) preserves the norm of each pair set.
        if p.ext_factor == 0.0 {
            let n0: f32 = x[..p.n_rot].iter().map(|v| v * v).sum();
            let n1: f32 = y[..p.n_rot].iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() <= 1e-4 * n0, "{name}: norm changed");
        }
    }
}

/// The unrounded range differs from the rounded one where it should (gpt-oss's numbers), so the
/// flag changes the rotation.
#[test]
fn yarn_exact_range_is_unrounded() {
    let f = |beta: f64| 64.0 * (4096.0 / (beta * 2.0 * std::f64::consts::PI)).ln() / (2.0 * 150000f64.ln());
    let exact = rope_yarn_corr_dims_exact(64, 4096, 150000.0, 32.0, 1.0);
    assert_eq!(exact, [f(32.0) as f32, f(1.0) as f32]);
    assert_eq!(rope_yarn_corr_dims(64, 4096, 150000.0, 32.0, 1.0), [8.0, 18.0]);
    assert!(exact[0] > 8.05 && exact[1] < 17.5, "{exact:?}");
    let p = RopeParams {
        n_rot: 64,
        neox: true,
        freq_base: 150000.0,
        freq_scale: 1.0 / 32.0,
        ext_factor: 1.0,
        n_ctx_orig: 4096,
        ..Default::default()
    };
    let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
    rope_cache(1000.0, &p, &mut a);
    rope_cache(1000.0, &RopeParams { yarn_exact: true, ..p }, &mut b);
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3), "the unrounded range must change the rotation");
}

#[test]
fn yarn_corr_dims_match_formula() {
    // n_dims 128, n_ctx_orig 4096, base 10000, beta 32 / 1: computed by hand from the formula
    // n_dims * ln(n_ctx / (beta * 2 pi)) / (2 ln base) in the f64 reference below.
    let got = rope_yarn_corr_dims(128, 4096, 10000.0, 32.0, 1.0);
    let f = |beta: f64| 128.0 * (4096.0 / (beta * 2.0 * std::f64::consts::PI)).ln() / (2.0 * 10000f64.ln());
    assert_eq!(got[0] as f64, f(32.0).floor().max(0.0));
    assert_eq!(got[1] as f64, f(1.0).ceil().min(127.0));
}

/// erf by Simpson integration of 2/sqrt(pi) exp(-t^2): an independent f64 reference.
fn erf_ref(x: f64) -> f64 {
    let n = 4000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// GELU and GEGLU bit for bit as llama.cpp computes them (`GGML_GELU_FP16` table). Reference:
/// `tests/fixtures/llama_cpp_gelu.json`, produced by
/// `/work/venv/bin/python host/cpu/tests/fixtures/llama_cpp_gelu.py host/cpu/tests/fixtures/llama_cpp_gelu.json`.
#[test]
fn gelu_is_llama_cpp_bits() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_cpp_gelu.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("fixture")).expect("json");
    let f32s = |k: &str| -> Vec<f32> {
        let s = j[k].as_str().expect("hex");
        let b: Vec<u8> = (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect();
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let (x, g) = (f32s("x"), f32s("g"));
    let mut out = vec![0f32; x.len()];
    for (name, want) in [("gelu", f32s("gelu")), ("geglu", f32s("geglu"))] {
        if name == "gelu" {
            gelu(&x, &mut out);
        } else {
            geglu(&x, &g, &mut out);
        }
        let bad: Vec<usize> = (0..x.len()).filter(|&i| out[i].to_bits() != want[i].to_bits()).collect();
        assert!(
            bad.is_empty(),
            "{name}: {} of {} differ, first x = {} ours {} llama.cpp {}",
            bad.len(),
            x.len(),
            x[bad[0]],
            out[bad[0]],
            want[bad[0]]
        );
    }
}

#[test]
fn activations_match_f64() {
    let mut rng = Rng::new(4);
    let mut x = rng.vec(1000, 3.0);
    x.extend([0.0, -0.0, 1e-8, -90.0, 90.0, 20.0, -20.0]);
    let up = rng.vec(x.len(), 1.0);
    let n = x.len();
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let silu_ref: Vec<f64> = xd.iter().map(|&v| v / (1.0 + (-v).exp())).collect();
    let gelu_ref: Vec<f64> =
        xd.iter().map(|&v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())).collect();
    let gelu_erf_ref: Vec<f64> = xd.iter().map(|&v| 0.5 * v * (1.0 + erf_ref(v / 2f64.sqrt()))).collect();
    let mut out = vec![0f32; n];
    let rel = |got: &[f32], want: &[f64]| got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs())).fold(0.0, f64::max);
    silu(&x, &mut out);
    assert!(rel(&out, &silu_ref) < 2e-6, "silu {}", rel(&out, &silu_ref));
    // GELU goes through ggml's f16 table (input and output rounded to f16; exact bits checked in
    // `gelu_is_llama_cpp_bits`), so against the f64 formula it is f16-accurate only.
    gelu(&x, &mut out);
    assert!(rel(&out, &gelu_ref) < 2e-3, "gelu {}", rel(&out, &gelu_ref));
    gelu_erf(&x, &mut out);
    assert!(rel(&out, &gelu_erf_ref) < 2e-6, "gelu_erf {}", rel(&out, &gelu_erf_ref));
    swiglu(&x, &up, &mut out);
    let want: Vec<f64> = silu_ref.iter().zip(&up).map(|(s, &u)| s * u as f64).collect();
    assert!(rel(&out, &want) < 2e-6, "swiglu");
    geglu(&x, &up, &mut out);
    let want: Vec<f64> = gelu_ref.iter().zip(&up).map(|(s, &u)| s * u as f64).collect();
    assert!(rel(&out, &want) < 2e-3, "geglu");
    let mut sc = x.clone();
    softcap(&mut sc, 30.0);
    let want: Vec<f64> = xd.iter().map(|v| 30.0 * (v / 30.0).tanh()).collect();
    assert!(rel(&sc, &want) < 1e-6, "softcap");
}

#[test]
fn softmax_and_elementwise_match_f64() {
    let mut rng = Rng::new(5);
    for len in [1usize, 7, 8, 33, 500] {
        let mut row = rng.vec(len, 10.0);
        if len > 2 {
            row[1] = f32::NEG_INFINITY; // masked entries become exactly 0
        }
        let xd: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let m = xd.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = xd.iter().map(|v| (v - m).exp()).sum();
        let want: Vec<f64> = xd.iter().map(|v| (v - m).exp() / sum).collect();
        softmax_inplace(&mut row);
        assert!(max_abs(&row, &want) < 1e-6, "softmax len {len}: {}", max_abs(&row, &want));
        if len > 2 {
            assert_eq!(row[1], 0.0);
        }
    }
    let a = rng.vec(12, 1.0);
    let b = rng.vec(4, 1.0);
    let mut o = vec![0f32; 12];
    add(&a, &b, &mut o);
    for i in 0..12 {
        assert_eq!(o[i], a[i] + b[i % 4]);
    }
    mul(&a, &b, &mut o);
    for i in 0..12 {
        assert_eq!(o[i], a[i] * b[i % 4]);
    }
    let mut s = a.clone();
    scale(&mut s, 0.5);
    for i in 0..12 {
        assert_eq!(s[i], a[i] * 0.5);
    }
}
