//! Matrix-vector benchmark: achieved weight bandwidth of the quantized GEMV kernels against the
//! device-to-device copy bandwidth measured in the same run (the target: >= 80% of it on
//! matrices of 32 MB or more).
//!
//! Weights are random bytes with valid scales (throughput does not depend on values); enough
//! copies of each matrix rotate to exceed the L2 cache several times, so every launch streams
//! from memory. 20 launches are captured in one graph and replayed; the time per launch is the
//! median over replays, timed with events. Activations are quantized once outside the timed
//! region (`matmul_quantized`), as a decode step shares them between matrices.
//!
//! Usage: `gemv_bench [--device cuda:0] [--quick]`. Prints one `BENCH|...` line per case.

use rocmforge_gpu::{Device, DeviceSpec, GpuMatrix, Kernels, QuantActs};
use rocmforge_quant::GgmlType;

fn main() {
    if let Err(e) = run() {
        eprintln!("gemv_bench: {e}");
        std::process::exit(1);
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Random GGUF bytes of `ty` whose f16 scale fields hold small valid values (no NaN / inf).
fn random_matrix(ty: GgmlType, n_rows: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let bytes = n_rows * k / ty.block_size() * ty.type_size();
    let mut v = vec![0u8; bytes];
    for c in v.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        c.copy_from_slice(&r[..c.len()]);
    }
    let small = 0x2E66u16.to_le_bytes(); // 0.1
    let scale_fields: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::F16 | GgmlType::BF16 => {
            // Every element is an f16 / bf16: clear the top exponent bit so none is NaN / inf.
            for h in v.chunks_mut(2) {
                h[1] &= if ty == GgmlType::F16 { 0xBB } else { 0xBF };
            }
            &[]
        }
        GgmlType::F32 => {
            for f in v.chunks_mut(4) {
                f[3] &= 0xBF;
            }
            &[]
        }
        _ => &[],
    };
    for b in v.chunks_mut(ty.type_size()) {
        for &o in scale_fields {
            b[o..o + 2].copy_from_slice(&small);
        }
    }
    v
}

struct Bench<'a> {
    dev: &'a Device,
    s: &'a rocmforge_gpu::Stream,
    e0: &'a rocmforge_gpu::Event,
    e1: &'a rocmforge_gpu::Event,
    copy_bw: f64,
    acts: QuantActs,
}

const LAUNCHES: usize = 20;

impl Bench<'_> {
    /// Time one matrix shape and type; prints a BENCH line.
    #[allow(clippy::too_many_arguments)]
    fn case(
        &mut self,
        k: &Kernels,
        ty: GgmlType,
        host: &[u8],
        n_rows: usize,
        kd: usize,
        n_tokens: usize,
        label: &str,
        variant: &str,
    ) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let (dev, s) = (self.dev, self.s);
        let bytes = host.len();
        // Enough copies to stream ~512 MB per rotation (L2 is 50 MB on H100).
        // Small matrices get more copies (up to 256) and as many launches per graph.
        let copies = (512usize << 20).div_ceil(bytes).clamp(2, 256);
        let launches = copies.max(LAUNCHES);
        let mats: Vec<GpuMatrix> = (0..copies).map(|_| GpuMatrix::upload(dev, ty, host, n_rows, kd)).collect::<Result<_, _>>()?;
        let x: Vec<f32> = (0..n_tokens * kd).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let xd = dev.upload(&x)?;
        let mut y = dev.alloc::<f32>(n_tokens * n_rows)?;
        let quantized = mats[0].quantized_input();
        if quantized {
            k.quantize_q8(s, &xd, n_tokens, kd, &mut self.acts)?;
        }
        s.synchronize()?;
        s.begin_capture()?;
        for i in 0..launches {
            let m = &mats[i % copies];
            if quantized {
                k.matmul_quantized(s, m, &self.acts, n_tokens, &mut y)?;
            } else {
                k.matmul(s, m, &xd, n_tokens, &mut self.acts, &mut y)?;
            }
        }
        let exec = s.end_capture()?.instantiate()?;
        exec.launch(s)?; // warm-up
        s.synchronize()?;
        let mut times = Vec::new();
        for _ in 0..15 {
            self.e0.record(s)?;
            exec.launch(s)?;
            self.e1.record(s)?;
            self.e1.synchronize()?;
            times.push(self.e1.elapsed_ms(self.e0)? as f64 * 1e-3 / launches as f64);
        }
        let t = median(times);
        let bw = bytes as f64 / t;
        println!(
            "BENCH|mmv {}|{label} {variant}|t{n_tokens}|{:.1} MB|{:.2} us|{:.0} GB/s|{:.0}% of copy|{:.0}% of 3.35 TB/s",
            ty.name(),
            bytes as f64 / 1e6,
            t * 1e6,
            bw / 1e9,
            100.0 * bw / self.copy_bw,
            100.0 * bw / 3.35e12
        );
        s.synchronize()?;
        Ok(y.to_vec()?)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let spec: DeviceSpec = match args.iter().position(|a| a == "--device") {
        Some(i) => args.get(i + 1).ok_or("--device needs a value")?.parse()?,
        None => DeviceSpec::Auto,
    };
    let quick = args.iter().any(|a| a == "--quick");
    let dev = Device::open(spec)?;
    let info = dev.info().clone();
    println!("device: {info}");
    let k = Kernels::new(&dev)?;
    let s = dev.new_stream()?;
    let (e0, e1) = (dev.new_event(true)?, dev.new_event(true)?);

    // Device-to-device copy: bytes read + bytes written per copy.
    let copy_bw = {
        let n = 256usize << 20; // 1 GiB of f32
        let a = dev.alloc::<f32>(n)?;
        let mut b = dev.alloc::<f32>(n)?;
        s.copy_device(&a, &mut b)?;
        let mut times = Vec::new();
        for _ in 0..10 {
            e0.record(&s)?;
            s.copy_device(&a, &mut b)?;
            e1.record(&s)?;
            e1.synchronize()?;
            times.push(e1.elapsed_ms(&e0)? as f64 * 1e-3);
        }
        2.0 * (n * 4) as f64 / median(times)
    };
    println!("BENCH|copy|d2d 1GiB|{:.0} GB/s", copy_bw / 1e9);

    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let shapes: &[(usize, usize, &str)] = if quick {
        &[(4096, 4096, "4096x4096"), (14336, 4096, "14336x4096")]
    } else {
        &[
            (4096, 4096, "4096x4096 (q/o)"),
            (1024, 4096, "1024x4096 (k/v)"),
            (14336, 4096, "14336x4096 (gate/up)"),
            (4096, 14336, "4096x14336 (down)"),
        ]
    };
    let types = [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::F16];
    // Types added later run after the ablation below, so a time limit that stops the benchmark
    // early cuts these, not the established series.
    let later_types = [GgmlType::Q5_K, GgmlType::IQ4_XS, GgmlType::Q5_1, GgmlType::IQ4_NL, GgmlType::BF16, GgmlType::F32];
    let mut b = Bench { dev: &dev, s: &s, e0: &e0, e1: &e1, copy_bw, acts: QuantActs::new(&dev, 8 * 14336)? };
    for ty in types {
        for &(n_rows, kd, label) in shapes {
            let host = random_matrix(ty, n_rows, kd, &mut rng);
            for n_tokens in [1usize, 4] {
                b.case(&k, ty, &host, n_rows, kd, n_tokens, label, "")?;
            }
        }
    }
    // Ablation on the large matrices: tuning defines (kernels/mmv.cu, compat.h) times rows (warps)
    // per block. Every variant's output is checked against the default kernel's on the same
    // input (ABL line: max |difference| over max |y|), so a faster variant can become the
    // default on this evidence alone.
    let sets: &[(&str, &[&str])] = &[
        ("default", &[]),
        ("unrollK2", &["-DRF_MMV_UNROLL_K=2"]),
        ("wload1", &["-DRF_MMV_WLOAD=1"]),
        ("wload2", &["-DRF_MMV_WLOAD=2"]),
        ("unit16", &["-DRF_Q4K_UNIT16=1"]),
        ("unit16 unrollK2", &["-DRF_Q4K_UNIT16=1", "-DRF_MMV_UNROLL_K=2"]),
        ("unit16 unrollK4", &["-DRF_Q4K_UNIT16=1", "-DRF_MMV_UNROLL_K=4"]),
        ("unit16 wload2", &["-DRF_Q4K_UNIT16=1", "-DRF_MMV_WLOAD=2"]),
        ("unit16 unrollK2 wload2", &["-DRF_Q4K_UNIT16=1", "-DRF_MMV_UNROLL_K=2", "-DRF_MMV_WLOAD=2"]),
        ("unrollK2 wload1", &["-DRF_MMV_UNROLL_K=2", "-DRF_MMV_WLOAD=1"]),
    ];
    // Compiled on several threads (NVRTC is thread-safe; each set is a full compile, ~5 s).
    let built: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = sets.iter().map(|(_, defs)| sc.spawn(|| Kernels::with_options(&dev, defs))).collect();
        hs.into_iter().map(|h| h.join().expect("compile thread")).collect()
    });
    let mut ks = Vec::new();
    for ((name, _), k) in sets.iter().zip(built) {
        ks.push((*name, k?));
    }
    let cases: &[(GgmlType, usize, usize)] = &[
        (GgmlType::Q4_K, 14336, 4096),
        (GgmlType::Q4_K, 4096, 14336),
        (GgmlType::Q4_K, 4096, 4096),
        (GgmlType::Q6_K, 14336, 4096),
        (GgmlType::Q6_K, 4096, 14336),
        (GgmlType::Q4_0, 14336, 4096),
        (GgmlType::Q8_0, 14336, 4096),
    ];
    for &(ty, n_rows, kd) in cases {
        // Q4_K-only knobs are not run on the other types (they compile to the default there).
        let host = random_matrix(ty, n_rows, kd, &mut rng);
        let mut base: Option<Vec<f32>> = None;
        for rows in [1u32, 2, 4] {
            for (name, kk) in ks.iter_mut() {
                if ty != GgmlType::Q4_K && name.contains("unit16") {
                    continue;
                }
                kk.set_mmv_rows_per_block(rows)?;
                let label = format!("{n_rows}x{kd}");
                let y = b.case(kk, ty, &host, n_rows, kd, 1, &label, &format!("{name} rows{rows}"))?;
                match &base {
                    None => base = Some(y),
                    Some(b0) => {
                        let scale = b0.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
                        let diff = b0.iter().zip(&y).fold(0f32, |m, (a, c)| m.max((a - c).abs()));
                        println!("ABL|mmv {}|{label} {name} rows{rows}|rel diff {:.2e}", ty.name(), diff / scale);
                    }
                }
            }
        }
    }
    for ty in later_types {
        for &(n_rows, kd, label) in shapes {
            let host = random_matrix(ty, n_rows, kd, &mut rng);
            for n_tokens in [1usize, 4] {
                b.case(&k, ty, &host, n_rows, kd, n_tokens, label, "")?;
            }
        }
    }
    Ok(())
}
