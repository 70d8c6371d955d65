//! Every GPU kernel against the CPU backend (`rocmforge-cpu`) on random inputs, by normalised
//! error `||gpu - ref|| / ||ref||` with per-type bounds; outputs are poisoned with NaN before each
//! launch so an unwritten element fails. Also: device discovery, memory, streams, events and
//! graph capture/replay.
//!
//! Without a GPU every test prints a note and passes, except under ROCMFORGE_REQUIRE_GPU=1
//! (the GPU machine's script sets it), where a missing device fails. Each check prints one
//! `RESULT|op|case|metric|error|bound` line; scripts/gpu-check.sh tabulates them.

use std::sync::OnceLock;

use rocmforge_cpu::{AttnParams, GgmlType, Isa, KvCache, KvCacheType, KvHeadScales, RopeParams, ThreadPool};
use rocmforge_gpu::{
    AttnBatch, AttnConfig, AttnSeq, AttnSplit, AttnWorkspace, Device, DeviceBuffer, DeviceSpec, GemmScratch, Glu, GpuError, GpuKvCache,
    GpuMatrix, Kernels, KvType, QuantActs, RopeConfig, Stream,
};

const POISON: u32 = 0x7FC0_0001; // a NaN

struct Gpu {
    dev: Device,
    k: Kernels,
}

fn gpu() -> Option<&'static Gpu> {
    static G: OnceLock<Option<Gpu>> = OnceLock::new();
    G.get_or_init(|| {
        let require = std::env::var("ROCMFORGE_REQUIRE_GPU").is_ok_and(|v| v == "1");
        let spec: DeviceSpec = std::env::var("ROCMFORGE_TEST_DEVICE").ok().and_then(|s| s.parse().ok()).unwrap_or(DeviceSpec::Auto);
        match Device::open(spec) {
            Ok(dev) => {
                println!("device: {}", dev.info());
                let t = std::time::Instant::now();
                let k = Kernels::new(&dev).unwrap_or_else(|e| panic!("kernels failed to build: {e}"));
                println!("kernels ready in {:.2} s (cache: {:?})", t.elapsed().as_secs_f64(), rocmforge_gpu::cache_dir());
                Some(Gpu { dev, k })
            }
            Err(e) if require => panic!("ROCMFORGE_REQUIRE_GPU=1 but no GPU: {e}"),
            Err(e) => {
                println!("note: no GPU, skipping GPU tests ({e})");
                None
            }
        }
    })
    .as_ref()
}

/// xorshift64*: deterministic, dependency-free random numbers for test inputs.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Roughly normal (sum of uniforms), scaled.
    fn normal(&mut self, s: f32) -> f32 {
        (self.f() + self.f() + self.f()) * s
    }
    fn vec(&mut self, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(s)).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn nerr(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

fn check(op: &str, case: &str, metric: &str, err: f64, bound: f64) {
    println!("RESULT|{op}|{case}|{metric}|{err:.3e}|{bound:.0e}");
    assert!(err <= bound, "{op} {case} ({metric}): normalised error {err:.3e} > {bound:.0e}");
}

fn poisoned(g: &Gpu, s: &Stream, n: usize) -> DeviceBuffer<f32> {
    let mut b = g.dev.alloc::<f32>(n).expect("alloc");
    s.fill_u32(&mut b, POISON).expect("poison");
    b
}

fn download(s: &Stream, b: &DeviceBuffer<f32>) -> Vec<f32> {
    let mut v = vec![0f32; b.len()];
    s.copy_to_host(b, &mut v).expect("download");
    v
}

#[test]
fn open_reports_cleanly_without_device() {
    // Runs everywhere: with no GPU the loaders must return typed errors, never panic.
    for spec in ["cuda:0", "hip:0", "auto"] {
        match Device::open_str(spec) {
            Ok(d) => println!("{spec}: {}", d.info()),
            Err(e @ (GpuError::NoDevice { .. } | GpuError::LibraryNotFound { .. } | GpuError::DeviceOutOfRange { .. })) => {
                println!("{spec}: {e}")
            }
            Err(e) => panic!("{spec}: unexpected error {e:?}"),
        }
    }
    assert!(matches!(Device::open_str("cuda:x"), Err(GpuError::BadSpec { .. })));
}

#[test]
fn device_memory_streams_events_graphs() {
    let Some(g) = gpu() else { return };
    let info = g.dev.info();
    assert!(info.warp_size == 32 || info.warp_size == 64, "{info:?}");
    assert!(info.total_memory > 0 && !info.name.is_empty() && !info.arch.is_empty());
    let (free, total) = g.dev.memory().expect("memory");
    assert!(free > 0 && free <= total);
    // Sync and async copies, device to device, stream-ordered allocation.
    let data: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.5).collect();
    let a = g.dev.upload(&data).expect("upload");
    assert_eq!(a.to_vec().expect("download"), data);
    let s = g.dev.new_stream().expect("stream");
    let mut b = s.alloc::<f32>(data.len()).expect("alloc async");
    s.copy_device(&a, &mut b).expect("dtod");
    let mut back = vec![0f32; data.len()];
    s.copy_to_host(&b, &mut back).expect("dtoh async");
    assert_eq!(back, data);
    s.free(b).expect("free async");
    // Events time a kernel.
    let (e0, e1) = (g.dev.new_event(true).expect("event"), g.dev.new_event(true).expect("event"));
    let mut out = poisoned(g, &s, data.len());
    e0.record(&s).expect("record");
    g.k.scale(&s, &a, 2.0, &mut out).expect("scale");
    e1.record(&s).expect("record");
    e1.synchronize().expect("event sync");
    let ms = e1.elapsed_ms(&e0).expect("elapsed");
    assert!(ms >= 0.0, "{ms}");
    assert_eq!(download(&s, &out), data.iter().map(|v| v * 2.0).collect::<Vec<_>>());
    // Graph capture: 3 dependent kernels captured once, replayed twice on fresh inputs.
    let mut x = g.dev.upload(&data).expect("upload");
    let mut t1 = g.dev.alloc::<f32>(data.len()).expect("alloc");
    let mut t2 = g.dev.alloc::<f32>(data.len()).expect("alloc");
    s.begin_capture().expect("begin capture");
    g.k.scale(&s, &x, 3.0, &mut t1).expect("scale");
    g.k.add(&s, &t1, &x, &mut t2).expect("add");
    g.k.mul(&s, &t2, &t1, &mut out).expect("mul");
    let graph = s.end_capture().expect("end capture");
    let exec = graph.instantiate().expect("instantiate");
    exec.upload(&s).expect("upload graph");
    for round in 0..2 {
        let input: Vec<f32> = data.iter().map(|v| v + round as f32).collect();
        s.copy_to_device(&input, &mut x).expect("h2d");
        s.fill_u32(&mut out, POISON).expect("poison");
        exec.launch(&s).expect("graph launch");
        let got = download(&s, &out);
        let want: Vec<f32> = input.iter().map(|v| (3.0 * v + v) * (3.0 * v)).collect();
        check("graph", &format!("replay{round}"), "exact", nerr(&got, &want), 1e-7);
    }
    println!(
        "RESULT|device|{}|{}|{:.1}GiB|warp{}",
        info.name.replace('|', "/"),
        info.arch,
        info.total_memory as f64 / (1u64 << 30) as f64,
        info.warp_size
    );
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(1);
    for (rows, len, with_w) in [(5, 576, true), (3, 4096, false), (2, 100, true)] {
        let x = r.vec(rows * len, 2.0);
        let w = r.vec(len, 1.0);
        let mut want = vec![0f32; x.len()];
        rocmforge_cpu::rms_norm(&x, with_w.then_some(&w[..]), 1e-5, len, &mut want);
        let (xd, wd) = (g.dev.upload(&x).expect("up"), g.dev.upload(&w).expect("up"));
        let mut out = poisoned(g, &s, x.len());
        g.k.rms_norm(&s, &xd, with_w.then_some(&wd), 1e-5, len, &mut out).expect("rms_norm");
        check("rms_norm", &format!("{rows}x{len}{}", if with_w { "+w" } else { "" }), "cpu", nerr(&download(&s, &out), &want), 1e-6);
    }
}

#[test]
fn rope_matches_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(2);
    let cases = [
        ("neox", RopeConfig { n_rot: 64, neox: true, freq_base: 10000.0, ..Default::default() }, 64, false),
        ("normal", RopeConfig { n_rot: 128, neox: false, freq_base: 500000.0, ..Default::default() }, 128, false),
        ("partial+scale", RopeConfig { n_rot: 32, neox: true, freq_base: 10000.0, freq_scale: 0.25, ..Default::default() }, 80, false),
        (
            "yarn+factors",
            RopeConfig {
                n_rot: 64,
                neox: true,
                freq_base: 1e6,
                freq_scale: 0.125,
                ext_factor: 1.0,
                attn_factor: 1.0,
                n_ctx_orig: 4096,
                ..Default::default()
            },
            64,
            true,
        ),
    ];
    for (name, cfg, head_dim, factors) in cases {
        let (n_tokens, n_head) = (7, 4);
        let x = r.vec(n_tokens * n_head * head_dim, 1.0);
        let pos: Vec<i32> = (0..n_tokens).map(|_| r.below(2048) as i32).collect();
        let ff: Vec<f32> = (0..cfg.n_rot / 2).map(|_| 1.0 + r.f().abs() * 4.0).collect();
        let p = RopeParams {
            n_rot: cfg.n_rot,
            neox: cfg.neox,
            freq_base: cfg.freq_base,
            freq_scale: cfg.freq_scale,
            ext_factor: cfg.ext_factor,
            attn_factor: cfg.attn_factor,
            beta_fast: cfg.beta_fast,
            beta_slow: cfg.beta_slow,
            n_ctx_orig: cfg.n_ctx_orig,
            freq_factors: factors.then(|| ff.clone()),
            yarn_exact: false,
        };
        let mut want = x.clone();
        rocmforge_cpu::rope(&mut want, n_tokens, n_head, head_dim, &pos, &p);
        let mut xd = g.dev.upload(&x).expect("up");
        let pd = g.dev.upload(&pos).expect("up");
        let ffd = g.dev.upload(&ff).expect("up");
        g.k.rope(&s, &mut xd, n_tokens, n_head, head_dim, &pd, &cfg, factors.then_some(&ffd)).expect("rope");
        // Angles up to ~2000 rad: the CPU's repeated multiplication and the GPU's powf differ by
        // a few ulp of the angle, i.e. ~1e-4 absolute at the largest positions.
        check("rope", name, "cpu", nerr(&download(&s, &xd), &want), 2e-4);
    }
}

#[test]
fn glu_and_binary_match_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(3);
    let n = 3 * 1536;
    let (a, b) = (r.vec(n, 2.0), r.vec(n, 2.0));
    let bias = r.vec(1536, 1.0);
    let (ad, bd, biasd) = (g.dev.upload(&a).expect("up"), g.dev.upload(&b).expect("up"), g.dev.upload(&bias).expect("up"));
    let mut want = vec![0f32; n];
    let mut out = poisoned(g, &s, n);
    rocmforge_cpu::swiglu(&a, &b, &mut want);
    g.k.swiglu(&s, &ad, &bd, &mut out).expect("swiglu");
    check("swiglu", "3x1536", "cpu", nerr(&download(&s, &out), &want), 1e-6);
    rocmforge_cpu::geglu(&a, &b, &mut want);
    s.fill_u32(&mut out, POISON).expect("poison");
    g.k.geglu(&s, &ad, &bd, &mut out).expect("geglu");
    // The CPU evaluates GELU through ggml's f16 table (input rounded to f16): ~1e-3 apart.
    check("geglu", "3x1536", "cpu", nerr(&download(&s, &out), &want), 3e-3);
    rocmforge_cpu::add(&a, &bias, &mut want);
    s.fill_u32(&mut out, POISON).expect("poison");
    g.k.add(&s, &ad, &biasd, &mut out).expect("add");
    check("add", "broadcast", "cpu", nerr(&download(&s, &out), &want), 0.0);
    rocmforge_cpu::mul(&a, &b, &mut want);
    s.fill_u32(&mut out, POISON).expect("poison");
    g.k.mul(&s, &ad, &bd, &mut out).expect("mul");
    check("mul", "3x1536", "cpu", nerr(&download(&s, &out), &want), 0.0);
    want.copy_from_slice(&a);
    rocmforge_cpu::scale(&mut want, 0.37);
    s.fill_u32(&mut out, POISON).expect("poison");
    g.k.scale(&s, &ad, 0.37, &mut out).expect("scale");
    check("scale", "3x1536", "cpu", nerr(&download(&s, &out), &want), 0.0);
}

#[test]
fn argmax_matches_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(4);
    let (rows, cols) = (5, 151_936);
    let mut x = r.vec(rows * cols, 3.0);
    x[2 * cols + 77] = 100.0; // a tie: the lower index must win
    x[2 * cols + 99_000] = 100.0;
    x[4 * cols + 5] = f32::NAN; // NaN never wins
    let xd = g.dev.upload(&x).expect("up");
    let mut out = g.dev.alloc::<u32>(rows).expect("alloc");
    s.fill_u32(&mut out, 0xFFFF_FFFF).expect("poison");
    g.k.argmax(&s, &xd, rows, &mut out).expect("argmax");
    let mut got = vec![0u32; rows];
    s.copy_to_host(&out, &mut got).expect("down");
    let want: Vec<u32> = (0..rows)
        .map(|i| {
            let row = &x[i * cols..(i + 1) * cols];
            let mut best = (f32::NEG_INFINITY, 0u32);
            for (j, &v) in row.iter().enumerate() {
                if v > best.0 {
                    best = (v, j as u32);
                }
            }
            best.1
        })
        .collect();
    assert_eq!(got, want);
    println!("RESULT|argmax|{rows}x{cols}|exact|0|0");
}

#[test]
fn get_rows_matches_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(5);
    let (n_rows, row_len) = (50, 512);
    let src = r.vec(n_rows * row_len, 1.0);
    let ids: Vec<u32> = vec![3, 0, 49, 3, 17];
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16].into_iter().chain(QUANTIZED) {
        let table: Vec<u8> = match ty {
            GgmlType::F32 => src.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => rocmforge_quant::quantize_to_vec(ty, &src).expect("quantize"),
        };
        let mut want = vec![0f32; ids.len() * row_len];
        rocmforge_cpu::get_rows(ty, &table, row_len, &ids, &mut want).expect("cpu get_rows");
        let (td, idd) = (g.dev.upload(&table).expect("up"), g.dev.upload(&ids).expect("up"));
        let mut out = poisoned(g, &s, want.len());
        g.k.get_rows(&s, ty, &td, row_len, &idd, &mut out).expect("get_rows");
        // `d * q - m` may be contracted into one fma on the GPU: 1 ulp apart at most.
        check("get_rows", ty.name(), "cpu", nerr(&download(&s, &out), &want), 1e-6);
    }
}

/// Activations quantized as the GPU does (ops.cu quantize_q8_f32), dequantized again.
fn emulate_q8(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (xb, ob) in x.chunks(32).zip(out.chunks_mut(32)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in ob.iter_mut().zip(xb) {
            *o = (v * id).round_ties_even() * d;
        }
    }
    out
}

/// Every quantized weight type the GPU kernels take (int8 activations).
const QUANTIZED: [GgmlType; 10] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
];

fn ref_matmul(w: &[f32], x: &[f32], n_rows: usize, k: usize, n_tokens: usize) -> Vec<f32> {
    let mut y = vec![0f32; n_rows * n_tokens];
    for t in 0..n_tokens {
        for r in 0..n_rows {
            let s: f64 = (0..k).map(|i| w[r * k + i] as f64 * x[t * k + i] as f64).sum();
            y[t * n_rows + r] = s as f32;
        }
    }
    y
}

#[test]
fn matmul_matches_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let pool = ThreadPool::new(4);
    let mut r = Rng::new(6);
    // (type, bound vs the CPU backend). The CPU quantizes activations per llama.cpp: to Q8_0
    // (Q4_0, Q5_0, Q8_0, IQ4_NL) or Q8_1 (Q4_1, Q5_1) like the GPU, but with f16 scales; to
    // Q8_K (256-blocks) for K-quants and IQ4_XS, a different rounding of the same values (~1e-2
    // apart). For F16 / BF16 weights it rounds the activations to f16 / bf16 (the GPU keeps
    // f32: ~2^-12 / 2^-9 relative apart); F32 stays f32 on both.
    let types = [
        (GgmlType::Q4_0, 2e-3),
        (GgmlType::Q4_1, 2e-3),
        (GgmlType::Q5_0, 2e-3),
        (GgmlType::Q5_1, 2e-3),
        (GgmlType::Q8_0, 2e-3),
        (GgmlType::IQ4_NL, 2e-3),
        (GgmlType::Q4_K, 2e-2),
        (GgmlType::Q5_K, 2e-2),
        (GgmlType::Q6_K, 2e-2),
        (GgmlType::IQ4_XS, 2e-2),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::F32, 1e-5),
    ];
    let mut acts = QuantActs::new(&g.dev, 11 * 4096).expect("acts");
    for (ty, cpu_bound) in types {
        for (n_rows, k) in [(97, 768), (64, 4096)] {
            let wf = r.vec(n_rows * k, 0.5);
            let wq = rocmforge_quant::quantize_to_vec(ty, &wf).expect("quantize");
            let mut wdq = vec![0f32; n_rows * k];
            rocmforge_quant::dequantize(ty, &wq, &mut wdq).expect("dequantize");
            let gm = GpuMatrix::upload(&g.dev, ty, &wq, n_rows, k).expect("upload matrix");
            // 1, 2, 3 (-> the NT = 4 kernel), 8, 11 (8 + 3): every NT variant.
            for n_tokens in [1, 2, 3, 8, 11] {
                let x = r.vec(n_tokens * k, 1.0);
                let xd = g.dev.upload(&x).expect("up");
                let mut y = poisoned(g, &s, n_rows * n_tokens);
                g.k.matmul(&s, &gm, &xd, n_tokens, &mut acts, &mut y).expect("matmul");
                let got = download(&s, &y);
                let case = format!("{}x{k} t{n_tokens}", n_rows);
                // 1. Against the exact product of the GPU's own int8 activations: any indexing
                //    or decoding bug shows here far above float rounding.
                let xe = if gm.quantized_input() { emulate_q8(&x) } else { x.clone() };
                check(&format!("mmv_{}", ty.name()), &case, "emulated", nerr(&got, &ref_matmul(&wdq, &xe, n_rows, k, n_tokens)), 2e-5);
                // 2. Against the CPU backend.
                let mut want = vec![0f32; n_rows * n_tokens];
                rocmforge_cpu::matmul(&pool, ty, &wq, n_rows, k, &x, n_tokens, &mut want).expect("cpu matmul");
                check(&format!("mmv_{}", ty.name()), &case, "cpu", nerr(&got, &want), cpu_bound);
                // 3. Against the exact f64 product with f32 activations (activation rounding).
                let exact_bound = if gm.quantized_input() { 1.5e-2 } else { 1e-5 };
                check(&format!("mmv_{}", ty.name()), &case, "exact", nerr(&got, &ref_matmul(&wdq, &x, n_rows, k, n_tokens)), exact_bound);
            }
        }
    }
}

#[test]
fn multi_matrix_launch_equals_single_launches() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(9);
    let k = 512;
    for ty in QUANTIZED {
        for rows in [&[96usize, 32, 32][..], &[70, 33]] {
            let ms: Vec<GpuMatrix> = rows
                .iter()
                .map(|&n| {
                    let wq = rocmforge_quant::quantize_to_vec(ty, &r.vec(n * k, 0.5)).expect("quantize");
                    GpuMatrix::upload(&g.dev, ty, &wq, n, k).expect("upload")
                })
                .collect();
            for n_tok in [1, 5, 11] {
                let mut acts = QuantActs::new(&g.dev, n_tok * k).expect("acts");
                let x = g.dev.upload(&r.vec(n_tok * k, 1.0)).expect("up");
                g.k.quantize_q8(&s, &x, n_tok, k, &mut acts).expect("quantize");
                let mut multi: Vec<DeviceBuffer<f32>> = rows.iter().map(|&n| poisoned(g, &s, n * n_tok)).collect();
                let mut ys: Vec<&mut DeviceBuffer<f32>> = multi.iter_mut().collect();
                let ws: Vec<&GpuMatrix> = ms.iter().collect();
                g.k.matmul_quantized_multi(&s, &ws, &acts, n_tok, &mut ys).expect("multi");
                for (m, got) in ms.iter().zip(&multi) {
                    let mut y = poisoned(g, &s, m.n_rows * n_tok);
                    g.k.matmul_quantized(&s, m, &acts, n_tok, &mut y).expect("single");
                    let (a, b) = (download(&s, got), download(&s, &y));
                    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{} {rows:?} t{n_tok}", ty.name());
                }
                check("mmv3", &format!("{} {rows:?} t{n_tok}", ty.name()), "single", 0.0, 0.0);
            }
        }
    }
}

#[test]
fn fused_quantizing_kernels_equal_the_unfused_pair() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(8);
    let (n_rows, k, n_tok) = (64, 512, 3);
    let wq = rocmforge_quant::quantize_to_vec(GgmlType::Q4_K, &r.vec(n_rows * k, 0.5)).expect("quantize");
    let gm = GpuMatrix::upload(&g.dev, GgmlType::Q4_K, &wq, n_rows, k).expect("upload");
    let x = g.dev.upload(&r.vec(n_tok * k, 2.0)).expect("up");
    let u = g.dev.upload(&r.vec(n_tok * k, 2.0)).expect("up");
    let nw = g.dev.upload(&r.vec(k, 1.0)).expect("up");
    let (mut a1, mut a2) = (QuantActs::new(&g.dev, n_tok * k).expect("acts"), QuantActs::new(&g.dev, n_tok * k).expect("acts"));
    // (fused output, unfused output, product through the fused acts, through quantize_q8)
    let run = |fused: bool, glu: Option<Glu>, acts: &mut QuantActs| -> (Vec<f32>, Vec<f32>) {
        let mut out = poisoned(g, &s, n_tok * k);
        match (glu, fused) {
            (None, true) => g.k.rms_norm_q8(&s, &x, Some(&nw), 1e-5, k, &mut out, acts).expect("rms_norm_q8"),
            (None, false) => g.k.rms_norm(&s, &x, Some(&nw), 1e-5, k, &mut out).expect("rms_norm"),
            (Some(a), true) => g.k.glu_q8(&s, a, &x, &u, k, &mut out, acts).expect("glu_q8"),
            (Some(Glu::Swi), false) => g.k.swiglu(&s, &x, &u, &mut out).expect("swiglu"),
            (Some(Glu::Ge), false) => g.k.geglu(&s, &x, &u, &mut out).expect("geglu"),
        }
        if !fused {
            g.k.quantize_q8(&s, &out, n_tok, k, acts).expect("quantize");
        }
        let mut y = poisoned(g, &s, n_rows * n_tok);
        g.k.matmul_quantized(&s, &gm, acts, n_tok, &mut y).expect("mmv");
        (download(&s, &out), download(&s, &y))
    };
    for glu in [None, Some(Glu::Swi), Some(Glu::Ge)] {
        let (o1, y1) = run(true, glu, &mut a1);
        let (o2, y2) = run(false, glu, &mut a2);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&o1), bits(&o2), "{glu:?}: fused output differs");
        assert_eq!(bits(&y1), bits(&y2), "{glu:?}: product of the fused quantization differs");
        check("fused_q8", &format!("{glu:?}"), "unfused", nerr(&y1, &y2), 0.0);
    }
}

/// Round to f16 and back (what the GEMM path does to weights and activations).
fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

#[test]
fn gemm_matches_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(7);
    // A small chunk (4096 values) so one matrix takes several dequantize + GEMM rounds, with a
    // partial last chunk (97 rows of 768 = 18.2 chunks).
    let mut sc = match GemmScratch::new(&s, 64, 4096, 4096) {
        Ok(sc) => sc,
        Err(e) if std::env::var("ROCMFORGE_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("no vendor BLAS: {e}"),
        Err(e) => return println!("note: no vendor BLAS, skipping ({e})"),
    };
    println!("BLAS: {}", sc.library());
    for ty in QUANTIZED.into_iter().chain([GgmlType::F16, GgmlType::BF16, GgmlType::F32]) {
        for (n_rows, k) in [(97, 768), (64, 4096)] {
            let wf = r.vec(n_rows * k, 0.5);
            let wq = rocmforge_quant::quantize_to_vec(ty, &wf).expect("quantize");
            let mut wdq = vec![0f32; n_rows * k];
            rocmforge_quant::dequantize(ty, &wq, &mut wdq).expect("dequantize");
            let gm = GpuMatrix::upload(&g.dev, ty, &wq, n_rows, k).expect("upload matrix");
            for n_tokens in [1, 33, 64] {
                let x = r.vec(n_tokens * k, 1.0);
                let xd = g.dev.upload(&x).expect("up");
                let mut y = poisoned(g, &s, n_rows * n_tokens);
                g.k.gemm_input(&s, &xd, n_tokens, k, &mut sc).expect("gemm_input");
                g.k.gemm(&s, &gm, &mut sc, &mut y).expect("gemm");
                let got = download(&s, &y);
                let case = format!("{n_rows}x{k} t{n_tokens}");
                // Against the f64 product of the same f16-rounded operands: only accumulation
                // order differs (f32 on the tensor cores), so any decoding slip shows.
                let emulated = ref_matmul(&f16_round(&wdq), &f16_round(&x), n_rows, k, n_tokens);
                check(&format!("gemm_{}", ty.name()), &case, "emulated", nerr(&got, &emulated), 2e-5);
                // Against the exact product of the dequantized weights and f32 activations.
                check(&format!("gemm_{}", ty.name()), &case, "exact", nerr(&got, &ref_matmul(&wdq, &x, n_rows, k, n_tokens)), 2e-3);
            }
        }
    }
    // A k the converted input does not have is refused, not computed.
    let gm = GpuMatrix::upload(&g.dev, GgmlType::F16, &vec![0u8; 64 * 512 * 2], 64, 512).expect("upload");
    let mut y = poisoned(g, &s, 64);
    assert!(g.k.gemm(&s, &gm, &mut sc, &mut y).is_err());
}

#[test]
fn dequant_matches_cpu() {
    // The GEMM path's weight conversion on its own: rows of every type (F16 excepted: the GEMM
    // reads it as it is) to f16, against the CPU's dequantizer rounded to f16.
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(11);
    let (n_rows, k) = (37, 1536);
    for ty in QUANTIZED.into_iter().chain([GgmlType::BF16, GgmlType::F32]) {
        let wq = rocmforge_quant::quantize_to_vec(ty, &r.vec(n_rows * k, 0.5)).expect("quantize");
        let mut wdq = vec![0f32; n_rows * k];
        rocmforge_quant::dequantize(ty, &wq, &mut wdq).expect("dequantize");
        let gm = GpuMatrix::upload(&g.dev, ty, &wq, n_rows, k).expect("upload matrix");
        // A window of rows not starting at 0, as the GEMM's row chunks are.
        for (row0, rows) in [(0, n_rows), (5, 19)] {
            let mut out = g.dev.alloc::<u16>(rows * k).expect("alloc");
            s.fill_u32(&mut out, 0x7E00_7E00).expect("poison"); // f16 NaNs
            g.k.dequant_f16(&s, &gm, row0, rows, &mut out).expect("dequant");
            let mut got16 = vec![0u16; rows * k];
            s.copy_to_host(&out, &mut got16).expect("down");
            let got: Vec<f32> = got16.iter().map(|&h| rocmforge_quant::f16_to_f32(h)).collect();
            let want = &wdq[row0 * k..(row0 + rows) * k];
            let case = format!("{n_rows}x{k} rows {row0}..{}", row0 + rows);
            // The GPU computes each value as the CPU does, in f32, then rounds once to f16; a
            // contracted multiply-add can move the f32 value by an ulp and, rarely, the f16
            // rounding with it.
            check(&format!("dequant_{}", ty.name()), &case, "f16 of cpu", nerr(&got, &f16_round(want)), 1e-4);
            check(&format!("dequant_{}", ty.name()), &case, "cpu", nerr(&got, want), 5e-4);
        }
    }
}

/// Random K/V for `len` positions written into both caches for `block_table`.
#[allow(clippy::too_many_arguments)]
fn fill_kv(g: &Gpu, s: &Stream, r: &mut Rng, cpu: &mut KvCache, gpu: &mut GpuKvCache, layer: usize, bt: &[u32], len: usize) {
    let (hk, hv) = (gpu.n_head_kv * gpu.head_dim_k, gpu.n_head_kv * gpu.head_dim_v);
    let k = r.vec(len * hk, 1.0);
    let v = r.vec(len * hv, 1.0);
    cpu.write(layer, bt, 0, &k, &v, len).expect("cpu kv write");
    let slots: Vec<i64> = (0..len).map(|p| (bt[p / gpu.block_size] as usize * gpu.block_size + p % gpu.block_size) as i64).collect();
    let (kd, vd) = (g.dev.upload(&k).expect("up"), g.dev.upload(&v).expect("up"));
    let mut sb = g.dev.alloc::<i64>(len).expect("alloc");
    g.k.kv_write(s, gpu, layer, &kd, &vd, &slots, &mut sb).expect("kv_write");
    s.synchronize().expect("sync");
}

#[test]
fn kv_write_and_attention_match_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let pool = ThreadPool::new(4);
    let mut r = Rng::new(7);
    struct Case {
        name: &'static str,
        n_head: usize,
        n_kv: usize,
        dk: usize,
        seqs: Vec<(usize, usize)>, // (cached length, query tokens at the end)
        params: AttnParams,
    }
    let cases = [
        Case { name: "decode gqa4 d64", n_head: 8, n_kv: 2, dk: 64, seqs: vec![(1, 1), (37, 1), (300, 1)], params: AttnParams::default() },
        Case {
            name: "prefill win24 cap30 d128",
            n_head: 4,
            n_kv: 4,
            dk: 128,
            seqs: vec![(100, 40)],
            params: AttnParams { scale: Some(0.1), causal: true, sliding_window: Some(24), softcap: Some(30.0), sinks: None },
        },
        Case {
            name: "mixed chunk+decode d80",
            n_head: 6,
            n_kv: 2,
            dk: 80,
            seqs: vec![(50, 50), (9, 1), (130, 17)],
            params: AttnParams::default(),
        },
        Case {
            name: "noncausal d64",
            n_head: 4,
            n_kv: 1,
            dk: 64,
            seqs: vec![(20, 20)],
            params: AttnParams { scale: None, causal: false, sliding_window: None, softcap: None, sinks: None },
        },
    ];
    for c in cases {
        let (bs, n_blocks, n_layer, layer) = (16, 64, 2, 1);
        let mut cpu = KvCache::new(n_layer, c.n_kv, c.dk, c.dk, bs, n_blocks);
        let mut gk = GpuKvCache::new(&g.dev, n_layer, c.n_kv, c.dk, c.dk, bs, n_blocks).expect("cache");
        // Scattered, disjoint block tables.
        let mut free: Vec<u32> = (0..n_blocks as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, r.below(i + 1));
        }
        let tables: Vec<Vec<u32>> = c.seqs.iter().map(|&(len, _)| free.drain(..len.div_ceil(bs)).collect()).collect();
        for (t, &(len, _)) in tables.iter().zip(&c.seqs) {
            fill_kv(g, &s, &mut r, &mut cpu, &mut gk, layer, t, len);
        }
        // The caches must hold identical f16 values.
        let (kv_cpu, kv_gpu) = (cpu_cache_dump(&cpu, layer, &tables, &c.seqs), gpu_cache_dump(&s, &gk, layer, &tables, &c.seqs));
        check("kv_write", c.name, "cpu", nerr(&kv_gpu, &kv_cpu), 0.0);
        // Queries: the last q tokens of each sequence.
        let positions: Vec<Vec<usize>> = c.seqs.iter().map(|&(len, nq)| (len - nq..len).collect()).collect();
        let n_q: usize = c.seqs.iter().map(|s| s.1).sum();
        let q = r.vec(n_q * c.n_head * c.dk, 1.0);
        let mut want = vec![0f32; q.len()];
        let mut off = 0;
        for (i, &(len, nq)) in c.seqs.iter().enumerate() {
            let n = nq * c.n_head * c.dk;
            rocmforge_cpu::attention(
                &pool,
                &cpu,
                layer,
                &tables[i],
                &q[off..off + n],
                nq,
                len - nq,
                c.n_head,
                &c.params,
                &mut want[off..off + n],
            )
            .expect("cpu attention");
            off += n;
        }
        let seqs: Vec<AttnSeq<'_>> = c
            .seqs
            .iter()
            .enumerate()
            .map(|(i, &(len, _))| AttnSeq { block_table: &tables[i], seq_len: len, q_positions: &positions[i] })
            .collect();
        let batch = AttnBatch::new(&g.dev, &gk, &seqs).expect("batch");
        let qd = g.dev.upload(&q).expect("up");
        let mut out = poisoned(g, &s, q.len());
        let cfg = AttnConfig {
            scale: c.params.scale,
            causal: c.params.causal,
            sliding_window: c.params.sliding_window,
            softcap: c.params.softcap,
        };
        g.k.attention(&s, &gk, layer, &batch, &qd, c.n_head, &cfg, &mut out).expect("attention");
        // The CPU rounds the probabilities to f16 before the V sum (llama.cpp's f16 cache path).
        check("attention", c.name, "cpu", nerr(&download(&s, &out), &want), 2e-3);
    }
}

fn cpu_cache_dump(c: &KvCache, layer: usize, tables: &[Vec<u32>], seqs: &[(usize, usize)]) -> Vec<f32> {
    let mut out = Vec::new();
    for (t, &(len, _)) in tables.iter().zip(seqs) {
        for p in 0..len {
            for h in 0..c.n_head_kv() {
                for value in [false, true] {
                    let mut row = vec![0f32; if value { c.head_dim_v() } else { c.head_dim_k() }];
                    c.read(layer, t, p, h, value, &mut row).expect("read");
                    out.extend_from_slice(&row);
                }
            }
        }
    }
    out
}

fn gpu_cache_dump(s: &Stream, c: &GpuKvCache, layer: usize, tables: &[Vec<u32>], seqs: &[(usize, usize)]) -> Vec<f32> {
    gpu_cache_values(s, c, layer, tables, seqs, (1.0, 1.0))
}

/// The cache's K and V rows of every cached position, decoded on the host from the bytes the
/// GPU wrote (f16, q8_0 blocks, or E4M3 times the scales), in `cpu_cache_dump`'s order.
fn gpu_cache_values(
    s: &Stream,
    c: &GpuKvCache,
    layer: usize,
    tables: &[Vec<u32>],
    seqs: &[(usize, usize)],
    scales: (f32, f32),
) -> Vec<f32> {
    let mut k = vec![0u8; c.k.len()];
    let mut v = vec![0u8; c.v.len()];
    s.copy_to_host(&c.k, &mut k).expect("down");
    s.copy_to_host(&c.v, &mut v).expect("down");
    let (rk, rv) = (c.ty.row_bytes(c.head_dim_k), c.ty.row_bytes(c.head_dim_v));
    let mut out = Vec::new();
    for (t, &(len, _)) in tables.iter().zip(seqs) {
        for p in 0..len {
            let slot = (layer * c.n_blocks + t[p / c.block_size] as usize) * c.block_size + p % c.block_size;
            for h in 0..c.n_head_kv {
                let row = slot * c.n_head_kv + h;
                decode_row(c.ty, &k[row * rk..(row + 1) * rk], scales.0, &mut out);
                decode_row(c.ty, &v[row * rv..(row + 1) * rv], scales.1, &mut out);
            }
        }
    }
    out
}

/// One stored row as f32: f16 bits, ggml block_q8_0 (`qs[j] * d`), or E4M3 times `scale`.
fn decode_row(ty: KvType, b: &[u8], scale: f32, out: &mut Vec<f32>) {
    match ty {
        KvType::F16 => out.extend(b.chunks_exact(2).map(|h| rocmforge_quant::f16_to_f32(u16::from_le_bytes([h[0], h[1]])))),
        KvType::Q8_0 => {
            for blk in b.chunks_exact(34) {
                let d = rocmforge_quant::f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                out.extend(blk[2..].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        KvType::Fp8E4M3 => out.extend(b.iter().map(|&x| rocmforge_cpu::e4m3_to_f32(x) * scale)),
    }
}

// ------------------------------------------------------------------------- KV cache types, split-K

fn gpu_kv_type(ty: KvCacheType) -> KvType {
    match ty {
        KvCacheType::F16 => KvType::F16,
        KvCacheType::Q8_0 => KvType::Q8_0,
        KvCacheType::Fp8E4M3 => KvType::Fp8E4M3,
    }
}

/// A CPU and a GPU cache of one type holding the same K/V for `seqs` ((cached length, query
/// tokens at its end)) in layer 1 of 2, at scattered, disjoint blocks of 16 tokens.
struct KvPair {
    cpu: KvCache,
    gpu: GpuKvCache,
    tables: Vec<Vec<u32>>,
}

/// `wide`: values `normal * 2^e` with e in -12..8 (E4M3 subnormals and saturation); else normal.
#[allow(clippy::too_many_arguments)]
fn kv_pair(
    g: &Gpu,
    s: &Stream,
    r: &mut Rng,
    ty: KvCacheType,
    n_kv: usize,
    dk: usize,
    dv: usize,
    seqs: &[(usize, usize)],
    scales: (f32, f32),
    wide: bool,
) -> KvPair {
    let bs = 16;
    let n_blocks = seqs.iter().map(|q| q.0.div_ceil(bs)).sum::<usize>() + 3;
    let mut cpu = KvCache::with_type(ty, 2, n_kv, dk, dv, bs, n_blocks).expect("cpu cache");
    let mut gpu = GpuKvCache::with_type(&g.dev, gpu_kv_type(ty), 2, n_kv, dk, dv, bs, n_blocks).expect("gpu cache");
    cpu.set_fp8_scales(scales.0, scales.1).expect("scales");
    gpu.set_fp8_scales(scales.0, scales.1).expect("scales");
    let mut free: Vec<u32> = (0..n_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, r.below(i + 1));
    }
    let tables: Vec<Vec<u32>> = seqs.iter().map(|&(len, _)| free.drain(..len.div_ceil(bs)).collect()).collect();
    for (bt, &(len, _)) in tables.iter().zip(seqs) {
        let mut gen = |n: usize| -> Vec<f32> {
            (0..n).map(|_| if wide { r.normal(1.0) * 2f32.powi(r.below(20) as i32 - 12) } else { r.normal(1.0) }).collect()
        };
        let (k, v) = (gen(len * n_kv * dk), gen(len * n_kv * dv));
        cpu.write(1, bt, 0, &k, &v, len).expect("cpu kv write");
        let slots: Vec<i64> = (0..len).map(|p| (bt[p / bs] as usize * bs + p % bs) as i64).collect();
        let (kd, vd) = (g.dev.upload(&k).expect("up"), g.dev.upload(&v).expect("up"));
        if len > 0 {
            let mut sb = g.dev.alloc::<i64>(len).expect("alloc");
            g.k.kv_write(s, &mut gpu, 1, &kd, &vd, &slots, &mut sb).expect("kv_write");
        }
    }
    s.synchronize().expect("sync");
    KvPair { cpu, gpu, tables }
}

/// The CPU backend's attention of each sequence's last query tokens (`q`: n_q x n_head x dk).
fn cpu_attention(pool: &ThreadPool, kv: &KvPair, seqs: &[(usize, usize)], q: &[f32], n_head: usize, params: &AttnParams) -> Vec<f32> {
    let (dk, dv) = (kv.cpu.head_dim_k(), kv.cpu.head_dim_v());
    let n_q: usize = seqs.iter().map(|q| q.1).sum();
    let mut want = vec![0f32; n_q * n_head * dv];
    let mut t0 = 0;
    for (i, &(len, nq)) in seqs.iter().enumerate() {
        let (qs, os) = (&q[t0 * n_head * dk..(t0 + nq) * n_head * dk], &mut want[t0 * n_head * dv..(t0 + nq) * n_head * dv]);
        rocmforge_cpu::attention(pool, &kv.cpu, 1, &kv.tables[i], qs, nq, len - nq, n_head, params, os).expect("cpu attention");
        t0 += nq;
    }
    want
}

fn gpu_batch(g: &Gpu, kv: &KvPair, seqs: &[(usize, usize)]) -> AttnBatch {
    let positions: Vec<Vec<usize>> = seqs.iter().map(|&(len, nq)| (len - nq..len).collect()).collect();
    let list: Vec<AttnSeq<'_>> = seqs
        .iter()
        .enumerate()
        .map(|(i, &(len, _))| AttnSeq { block_table: &kv.tables[i], seq_len: len, q_positions: &positions[i] })
        .collect();
    AttnBatch::new(&g.dev, &kv.gpu, &list).expect("batch")
}

fn attn_config(p: &AttnParams) -> AttnConfig {
    AttnConfig { scale: p.scale, causal: p.causal, sliding_window: p.sliding_window, softcap: p.softcap }
}

/// GPU attention into a poisoned output; `split`: (n_part, min_keys) or one pass.
#[allow(clippy::too_many_arguments)]
fn gpu_attention(
    g: &Gpu,
    s: &Stream,
    kv: &KvPair,
    batch: &AttnBatch,
    q: &DeviceBuffer<f32>,
    n_head: usize,
    cfg: &AttnConfig,
    split: Option<(usize, usize)>,
    ws: &mut AttnWorkspace,
) -> Vec<f32> {
    let mut out = poisoned(g, s, batch.n_q * n_head * kv.gpu.head_dim_v);
    let sp = split.map(|(n_part, min_keys)| AttnSplit { ws, n_part, min_keys });
    g.k.attention_split(s, &kv.gpu, 1, batch, q, n_head, cfg, sp, &mut out).expect("attention");
    download(s, &out)
}

/// q8_0 and fp8 E4M3 KV caches (llama.cpp's `--cache-type-k/-v q8_0`, vLLM's `kv_cache_dtype=fp8`,
/// stored as the CPU backend stores them). The GPU's KV write must store what the CPU's
/// `KvCache::write` stores (decoded values equal: bound 0), on values from 2^-12 to ~2^9 with fp8
/// scales 0.5 / 2, so E4M3 subnormals and saturation both occur (asserted). Attention over the
/// caches must match the CPU's quantized path (q quantized to q8_0 for the K dot, exact integer
/// block dots, online softmax). Unlike its f16 path, the CPU does not round probabilities to f16
/// here, so the bound is 1e-4 rather than 2e-3: what remains is the order of float sums and
/// expf's last bits (a wrong block scale or a misread quant gives errors above 1e-2).
#[test]
fn quantized_kv_caches_match_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let pool = ThreadPool::new(4);
    let mut r = Rng::new(11);
    let mut ws = AttnWorkspace::new(&g.dev, 1, 32).expect("workspace");
    for ty in [KvCacheType::Q8_0, KvCacheType::Fp8E4M3] {
        let fp8 = ty == KvCacheType::Fp8E4M3;
        let scales = if fp8 { (0.5, 2.0) } else { (1.0, 1.0) };
        let seqs = [(40usize, 0usize), (7, 0)];
        let kv = kv_pair(g, &s, &mut r, ty, 2, 64, 96, &seqs, scales, true);
        let want = cpu_cache_dump(&kv.cpu, 1, &kv.tables, &seqs);
        let got = gpu_cache_values(&s, &kv.gpu, 1, &kv.tables, &seqs, scales);
        check(&format!("kv_write {}", ty.name()), "wide values dk64 dv96", "cpu", nerr(&got, &want), 0.0);
        if fp8 {
            let saturated = want.iter().filter(|x| x.abs() == 448.0 * 0.5 || x.abs() == 448.0 * 2.0).count();
            let subnormal = want.iter().filter(|x| x.abs() > 0.0 && x.abs() < 0.015625 * 0.5).count();
            assert!(saturated > 0 && subnormal > 0, "fp8: {saturated} saturated, {subnormal} subnormal values");
        }
        struct Case {
            name: &'static str,
            n_head: usize,
            n_kv: usize,
            dk: usize,
            dv: usize,
            seqs: Vec<(usize, usize)>,
            params: AttnParams,
        }
        let cases = [
            Case {
                name: "decode gqa4 d64",
                n_head: 8,
                n_kv: 2,
                dk: 64,
                dv: 64,
                seqs: vec![(1, 1), (37, 1), (300, 1)],
                params: AttnParams::default(),
            },
            Case {
                name: "prefill win24 cap30 d128",
                n_head: 4,
                n_kv: 4,
                dk: 128,
                dv: 128,
                seqs: vec![(100, 40)],
                params: AttnParams { scale: Some(0.1), causal: true, sliding_window: Some(24), softcap: Some(30.0), sinks: None },
            },
            Case {
                name: "mixed chunk+decode dk96 dv64",
                n_head: 6,
                n_kv: 2,
                dk: 96,
                dv: 64,
                seqs: vec![(50, 50), (9, 1), (130, 17)],
                params: AttnParams::default(),
            },
            Case {
                name: "noncausal d64",
                n_head: 4,
                n_kv: 1,
                dk: 64,
                dv: 64,
                seqs: vec![(20, 20)],
                params: AttnParams { scale: None, causal: false, sliding_window: None, softcap: None, sinks: None },
            },
        ];
        for c in cases {
            let kv = kv_pair(g, &s, &mut r, ty, c.n_kv, c.dk, c.dv, &c.seqs, scales, false);
            let n_q: usize = c.seqs.iter().map(|q| q.1).sum();
            let q = r.vec(n_q * c.n_head * c.dk, 1.0);
            let want = cpu_attention(&pool, &kv, &c.seqs, &q, c.n_head, &c.params);
            let batch = gpu_batch(g, &kv, &c.seqs);
            let got = gpu_attention(g, &s, &kv, &batch, &g.dev.upload(&q).expect("up"), c.n_head, &attn_config(&c.params), None, &mut ws);
            check(&format!("attention {}", ty.name()), c.name, "cpu", nerr(&got, &want), 1e-4);
        }
    }
    // A q8_0 cache needs head dims that are multiples of 32; every cache multiples of 4.
    assert!(GpuKvCache::with_type(&g.dev, KvType::Q8_0, 1, 1, 48, 48, 16, 4).is_err());
    assert!(GpuKvCache::with_type(&g.dev, KvType::F16, 1, 1, 66, 66, 16, 4).is_err());
}

/// fp8 with one scale per KV head for one layer (what the runtime's `KvScales` give a layer:
/// checkpoint or calibrated scales), against the CPU's `write_scaled` / `read_scaled` /
/// `attention_with_scales`: stored values equal (bound 0), attention within 1e-4 as above. The
/// two KV heads get different scales (so a head mix-up shows), and layer 0 keeps the cache-wide
/// scales (so a layer's own scales must not leak into another layer).
#[test]
fn fp8_per_head_scales_match_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let pool = ThreadPool::new(4);
    let mut r = Rng::new(41);
    let (n_head, n_kv, d, bs, n_blocks) = (8, 2, 64, 16, 24);
    let heads = KvHeadScales { k: vec![0.5, 0.125], v: vec![2.0, 8.0] };
    let mut cpu = KvCache::with_type(KvCacheType::Fp8E4M3, 2, n_kv, d, d, bs, n_blocks).expect("cpu cache");
    let mut gk = GpuKvCache::with_type(&g.dev, KvType::Fp8E4M3, 2, n_kv, d, d, bs, n_blocks).expect("gpu cache");
    cpu.set_fp8_scales(2.0, 0.5).expect("scales");
    gk.set_fp8_scales(2.0, 0.5).expect("scales");
    gk.set_layer_fp8_scales(&g.dev, 1, &heads.k, &heads.v).expect("layer scales");
    assert!(gk.set_layer_fp8_scales(&g.dev, 1, &[1.0; 3], &[1.0]).is_err(), "3 scales for 2 KV heads must be refused");
    let seqs = [(150usize, 1usize), (60, 20)];
    let tables: Vec<Vec<u32>> = vec![(0..10).rev().collect(), (12..16).collect()];
    for layer in [0, 1] {
        let sc = (layer == 1).then_some(&heads);
        let (ks, vs): (Vec<f32>, Vec<f32>) = match sc {
            Some(h) => (h.k.clone(), h.v.clone()),
            None => (vec![2.0; n_kv], vec![0.5; n_kv]),
        };
        for (bt, &(len, _)) in tables.iter().zip(&seqs) {
            let (k, v) = (r.vec(len * n_kv * d, 4.0), r.vec(len * n_kv * d, 4.0));
            cpu.write_scaled(layer, bt, 0, &k, &v, len, sc).expect("cpu kv write");
            let slots: Vec<i64> = (0..len).map(|p| (bt[p / bs] as usize * bs + p % bs) as i64).collect();
            let mut sb = g.dev.alloc::<i64>(len).expect("alloc");
            let (kd, vd) = (g.dev.upload(&k).expect("up"), g.dev.upload(&v).expect("up"));
            g.k.kv_write(&s, &mut gk, layer, &kd, &vd, &slots, &mut sb).expect("kv_write");
        }
        // Stored values, decoded with each head's scale.
        let (mut kb, mut vb) = (vec![0u8; gk.k.len()], vec![0u8; gk.v.len()]);
        s.copy_to_host(&gk.k, &mut kb).expect("down");
        s.copy_to_host(&gk.v, &mut vb).expect("down");
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let mut row = vec![0f32; d];
        for (bt, &(len, _)) in tables.iter().zip(&seqs) {
            for p in 0..len {
                let slot = (layer * n_blocks + bt[p / bs] as usize) * bs + p % bs;
                for h in 0..n_kv {
                    for (value, bytes, scale) in [(false, &kb, ks[h]), (true, &vb, vs[h])] {
                        let o = (slot * n_kv + h) * d;
                        decode_row(KvType::Fp8E4M3, &bytes[o..o + d], scale, &mut got);
                        cpu.read_scaled(layer, bt, p, h, value, sc, &mut row).expect("read");
                        want.extend_from_slice(&row);
                    }
                }
            }
        }
        check("kv_write fp8_e4m3", &format!("per-head scales, layer {layer}"), "cpu", nerr(&got, &want), 0.0);
        // Attention (decode and a prefill chunk in one batch).
        let n_q: usize = seqs.iter().map(|q| q.1).sum();
        let q = r.vec(n_q * n_head * d, 1.0);
        let params = AttnParams { softcap: Some(20.0), ..AttnParams::default() };
        let mut want = vec![0f32; q.len()];
        let mut t0 = 0;
        for (i, &(len, nq)) in seqs.iter().enumerate() {
            let (qs, os) = (&q[t0 * n_head * d..(t0 + nq) * n_head * d], &mut want[t0 * n_head * d..(t0 + nq) * n_head * d]);
            rocmforge_cpu::attention_with_scales(&pool, Isa::detect(), &cpu, layer, &tables[i], qs, nq, len - nq, n_head, &params, sc, os)
                .expect("cpu attention");
            t0 += nq;
        }
        let positions: Vec<Vec<usize>> = seqs.iter().map(|&(len, nq)| (len - nq..len).collect()).collect();
        let list: Vec<AttnSeq<'_>> = seqs
            .iter()
            .enumerate()
            .map(|(i, &(len, _))| AttnSeq { block_table: &tables[i], seq_len: len, q_positions: &positions[i] })
            .collect();
        let batch = AttnBatch::new(&g.dev, &gk, &list).expect("batch");
        let mut out = poisoned(g, &s, q.len());
        g.k.attention(&s, &gk, layer, &batch, &g.dev.upload(&q).expect("up"), n_head, &attn_config(&params), &mut out).expect("attention");
        check("attention fp8_e4m3", &format!("per-head scales, layer {layer}, cap20"), "cpu", nerr(&download(&s, &out), &want), 1e-4);
    }
}

/// Split-K ("flash decoding") attention against the one-pass kernel (bound 1e-5: only the order
/// in which partial softmax states merge differs) and against the CPU (the type's bound), for
/// every KV type: decode queries at contexts 1, 17, 300 and 5000 in one batch (GQA 8 / 2, d128),
/// without and with a sliding window of 1000, then the same four plus a 40-token prefill chunk.
/// Partition counts: the runtime's choice (`attn_split_parts` with this device's SM count,
/// partitions of >= 256 keys) and forced ones (2, 5, 16 and 64 partitions of >= 1 key, so
/// short contexts leave most partitions empty; 16 of >= 256 keys).
#[test]
fn split_attention_matches_unsplit_and_cpu() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let pool = ThreadPool::new(4);
    let mut r = Rng::new(23);
    let n_sm = g.dev.info().multiprocessors as usize;
    let (n_head, n_kv, d) = (8, 2, 128);
    let all = [(1usize, 1usize), (17, 1), (300, 1), (5000, 1), (340, 40)];
    let mut ws = AttnWorkspace::new(&g.dev, 44 * n_head * 64, d).expect("workspace");
    for ty in [KvCacheType::F16, KvCacheType::Q8_0, KvCacheType::Fp8E4M3] {
        let bound = if ty == KvCacheType::F16 { 2e-3 } else { 1e-4 };
        let kv = kv_pair(g, &s, &mut r, ty, n_kv, d, d, &all, (1.0, 1.0), false);
        let q = r.vec(44 * n_head * d, 1.0);
        for (batch_name, n_seqs) in [("decode 1/17/300/5000", 4), ("decode + prefill 40@340", 5)] {
            let seqs = &all[..n_seqs];
            let n_q: usize = seqs.iter().map(|q| q.1).sum();
            let qh = &q[..n_q * n_head * d];
            let qd = g.dev.upload(qh).expect("up");
            // kv.tables covers all five sequences; the batch takes the first n_seqs.
            let batch = gpu_batch(g, &kv, seqs);
            for window in [None, Some(1000)] {
                let params = AttnParams { sliding_window: window, ..AttnParams::default() };
                let cfg = attn_config(&params);
                let case = format!("{} {batch_name}{}", ty.name(), window.map_or(String::new(), |w| format!(" win{w}")));
                let want = cpu_attention(&pool, &kv, seqs, qh, n_head, &params);
                let one = gpu_attention(g, &s, &kv, &batch, &qd, n_head, &cfg, None, &mut ws);
                check("attention split", &case, "cpu (one pass)", nerr(&one, &want), bound);
                let key_parts = rocmforge_gpu::attn_key_parts(5000).min(window.map_or(usize::MAX, rocmforge_gpu::attn_key_parts));
                let chosen = rocmforge_gpu::attn_split_parts(key_parts, n_q * n_head, n_sm, rocmforge_gpu::attn_workspace_rows(n_sm));
                println!("split: {case}: the runtime would use {chosen} partitions ({n_sm} SMs)");
                let mut variants = vec![(2, 1), (5, 1), (16, 1), (64, 1), (16, rocmforge_gpu::ATTN_PART_KEYS)];
                if chosen > 1 {
                    variants.push((chosen, rocmforge_gpu::ATTN_PART_KEYS));
                }
                for (n_part, min_keys) in variants {
                    let got = gpu_attention(g, &s, &kv, &batch, &qd, n_head, &cfg, Some((n_part, min_keys)), &mut ws);
                    let metric = format!("unsplit {n_part}x>={min_keys}");
                    check("attention split", &case, &metric, nerr(&got, &one), 1e-5);
                }
            }
        }
    }
    // Refused: partition counts outside 2..=64 and a workspace too small for the launch.
    let kv = kv_pair(g, &s, &mut r, KvCacheType::F16, 1, 64, 64, &[(40, 1)], (1.0, 1.0), false);
    let batch = gpu_batch(g, &kv, &[(40, 1)]);
    let qd = g.dev.upload(&r.vec(64, 1.0)).expect("up");
    let mut out = poisoned(g, &s, 64);
    let mut small = AttnWorkspace::new(&g.dev, 3, 64).expect("workspace");
    for (n_part, small_ws) in [(1, false), (65, false), (4, true)] {
        let ws = if small_ws { &mut small } else { &mut ws };
        let sp = Some(AttnSplit { ws, n_part, min_keys: 1 });
        let e = g.k.attention_split(&s, &kv.gpu, 1, &batch, &qd, 1, &AttnConfig::default(), sp, &mut out);
        assert!(e.is_err(), "{n_part} partitions should be refused");
    }
}

/// A split launch captured into a graph once stays right when the context changes between
/// replays (the kernels read positions and lengths from device memory; the partition count is
/// fixed at capture): capture at a context of 600, replay at 5000, 17 and 600, each against an
/// eager one-pass launch on the same metadata (bound 1e-5).
#[test]
fn split_attention_graph_replays_follow_the_context() {
    let Some(g) = gpu() else { return };
    let s = g.dev.new_stream().expect("stream");
    let mut r = Rng::new(31);
    let (n_head, d) = (8, 64);
    let kv = kv_pair(g, &s, &mut r, KvCacheType::Q8_0, 2, d, d, &[(5000, 1)], (1.0, 1.0), false);
    let table = &kv.tables[0];
    let mut batch = AttnBatch::with_capacity(&g.dev, 1, 1, table.len()).expect("batch");
    let set = |batch: &mut AttnBatch, len: usize| {
        let pos = [len - 1];
        batch.fill(&s, &kv.gpu, &[AttnSeq { block_table: table, seq_len: len, q_positions: &pos }]).expect("fill");
    };
    let qd = g.dev.upload(&r.vec(n_head * d, 1.0)).expect("up");
    let mut ws = AttnWorkspace::new(&g.dev, n_head * 16, d).expect("workspace");
    let mut out = g.dev.alloc::<f32>(n_head * d).expect("alloc");
    let cfg = AttnConfig::default();
    set(&mut batch, 600);
    s.synchronize().expect("sync");
    s.begin_capture().expect("begin capture");
    let sp = Some(AttnSplit { ws: &mut ws, n_part: 16, min_keys: 32 });
    g.k.attention_split(&s, &kv.gpu, 1, &batch, &qd, n_head, &cfg, sp, &mut out).expect("captured attention");
    let exec = s.end_capture().expect("end capture").instantiate().expect("instantiate");
    let mut ws1 = AttnWorkspace::new(&g.dev, 1, 32).expect("workspace");
    for len in [5000, 17, 600] {
        set(&mut batch, len);
        s.fill_u32(&mut out, POISON).expect("poison");
        exec.launch(&s).expect("replay");
        let got = download(&s, &out);
        let want = gpu_attention(g, &s, &kv, &batch, &qd, n_head, &cfg, None, &mut ws1);
        check("attention split", &format!("q8_0 graph captured at 600, replayed at {len}"), "unsplit", nerr(&got, &want), 1e-5);
    }
}
