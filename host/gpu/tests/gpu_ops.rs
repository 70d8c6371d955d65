//! Every GPU kernel against the CPU backend (`rocmforge-cpu`) on random inputs, by normalised
//! error `||gpu - ref|| / ||ref||` with per-type bounds; outputs are poisoned with NaN before each
//! launch so an unwritten element fails. Also: device discovery, memory, streams, events and
//! graph capture/replay.
//!
//! Without a GPU every test prints a note and passes, except under ROCMFORGE_REQUIRE_GPU=1
//! (the GPU machine's script sets it), where a missing device fails. Each check prints one
//! `RESULT|op|case|metric|error|bound` line; scripts/gpu-check.sh tabulates them.

use std::sync::OnceLock;

use rocmforge_cpu::{AttnParams, GgmlType, KvCache, RopeParams, ThreadPool};
use rocmforge_gpu::{
    AttnBatch, AttnConfig, AttnSeq, Device, DeviceBuffer, DeviceSpec, GemmScratch, Glu, GpuError, GpuKvCache, GpuMatrix, Kernels,
    QuantActs, RopeConfig, Stream,
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
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K]
    {
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
    // (Q4_0, Q5_0, Q8_0) or Q8_1 (Q4_1) like the GPU, but with f16 scales; to Q8_K (256-blocks)
    // for K-quants, a different rounding of the same values (~1e-2 apart).
    let types = [
        (GgmlType::Q4_0, 2e-3),
        (GgmlType::Q4_1, 2e-3),
        (GgmlType::Q5_0, 2e-3),
        (GgmlType::Q8_0, 2e-3),
        (GgmlType::Q4_K, 2e-2),
        (GgmlType::Q6_K, 2e-2),
        (GgmlType::F16, 1e-3),
    ];
    let mut acts = QuantActs::new(&g.dev, 11 * 4096).expect("acts");
    for (ty, cpu_bound) in types {
        for (n_rows, k) in [(97, 768), (64, 4096)] {
            let wf = r.vec(n_rows * k, 0.5);
            let wq = rocmforge_quant::quantize_to_vec(ty, &wf).expect("quantize");
            let mut wdq = vec![0f32; n_rows * k];
            rocmforge_quant::dequantize(ty, &wq, &mut wdq).expect("dequantize");
            let gm = GpuMatrix::upload(&g.dev, ty, &wq, n_rows, k).expect("upload matrix");
            for n_tokens in [1, 3, 8, 11] {
                let x = r.vec(n_tokens * k, 1.0);
                let xd = g.dev.upload(&x).expect("up");
                let mut y = poisoned(g, &s, n_rows * n_tokens);
                g.k.matmul(&s, &gm, &xd, n_tokens, &mut acts, &mut y).expect("matmul");
                let got = download(&s, &y);
                let case = format!("{}x{k} t{n_tokens}", n_rows);
                // 1. Against the exact product of the GPU's own int8 activations: any indexing
                //    or decoding bug shows here far above float rounding.
                let xe = if ty == GgmlType::F16 { x.clone() } else { emulate_q8(&x) };
                check(&format!("mmv_{}", ty.name()), &case, "emulated", nerr(&got, &ref_matmul(&wdq, &xe, n_rows, k, n_tokens)), 2e-5);
                // 2. Against the CPU backend.
                let mut want = vec![0f32; n_rows * n_tokens];
                rocmforge_cpu::matmul(&pool, ty, &wq, n_rows, k, &x, n_tokens, &mut want).expect("cpu matmul");
                check(&format!("mmv_{}", ty.name()), &case, "cpu", nerr(&got, &want), cpu_bound);
                // 3. Against the exact f64 product with f32 activations (activation rounding).
                let exact_bound = if ty == GgmlType::F16 { 1e-5 } else { 1.5e-2 };
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
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
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
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16] {
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
            params: AttnParams { scale: Some(0.1), causal: true, sliding_window: Some(24), softcap: Some(30.0) },
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
            params: AttnParams { scale: None, causal: false, sliding_window: None, softcap: None },
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
    let mut row = vec![0f32; c.head_dim_k()];
    for (t, &(len, _)) in tables.iter().zip(seqs) {
        for p in 0..len {
            for h in 0..c.n_head_kv() {
                for value in [false, true] {
                    c.read(layer, t, p, h, value, &mut row).expect("read");
                    out.extend_from_slice(&row);
                }
            }
        }
    }
    out
}

fn gpu_cache_dump(s: &Stream, c: &GpuKvCache, layer: usize, tables: &[Vec<u32>], seqs: &[(usize, usize)]) -> Vec<f32> {
    let mut k = vec![0u16; c.k.len()];
    let mut v = vec![0u16; c.v.len()];
    s.copy_to_host(&c.k, &mut k).expect("down");
    s.copy_to_host(&c.v, &mut v).expect("down");
    let d = c.head_dim_k;
    let mut out = Vec::new();
    for (t, &(len, _)) in tables.iter().zip(seqs) {
        for p in 0..len {
            let slot = (layer * c.n_blocks + t[p / c.block_size] as usize) * c.block_size + p % c.block_size;
            for h in 0..c.n_head_kv {
                for buf in [&k, &v] {
                    let base = (slot * c.n_head_kv + h) * d;
                    out.extend(buf[base..base + d].iter().map(|&b| rocmforge_quant::f16_to_f32(b)));
                }
            }
        }
    }
    out
}
