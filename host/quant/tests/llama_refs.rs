//! rocmforge-quant against llama.cpp: every supported type's quantize and dequantize compared
//! with vectors that llama.cpp's own C library produced (fixtures in `tests/fixtures/`,
//! regenerate with `/work/venv/bin/python scripts/fixtures/quant_refs.py`, see its docstring).
//!
//! Invariants checked: dequantize is bitwise equal to llama.cpp's `to_float`; quantize is byte
//! equal to `ggml_quantize_chunk(imatrix = NULL)` (what llama-quantize writes) on a hand-shaped
//! input, on 512 pseudo-random rows and on real f16 weights; real quantized tensors of the
//! test models dequantize bitwise equal to llama.cpp. Also: round-trip error bounds vs f64,
//! length errors, and no panics on hostile bytes or floats.

use std::path::{Path, PathBuf};

use rocmforge_quant::{
    can_dequantize, can_quantize, dequantize, dequantize_to_vec, f16_to_f32, quantize, quantize_to_vec, GgmlType, QuantError,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest parses")
}

fn read_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Byte range of a test model; fails with instructions when the test data is missing.
fn model_bytes(rel: &str, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let path = repo_root().join(rel);
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-test-data.sh first", path.display()));
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read tensor bytes");
    buf
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap_or_else(|e| panic!("{e}"))
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// Compare our bytes with llama.cpp's; on mismatch say how many blocks differ and by how much
/// the decoded values differ, so a near-tie can be told apart from a real bug.
fn assert_same_bytes(t: GgmlType, ours: &[u8], want: &[u8], what: &str) {
    assert_eq!(ours.len(), want.len(), "{t} {what}: length");
    if ours == want {
        return;
    }
    let ts = t.type_size();
    let n_blocks = want.len() / ts;
    let bad: Vec<usize> = (0..n_blocks).filter(|&b| ours[b * ts..(b + 1) * ts] != want[b * ts..(b + 1) * ts]).collect();
    let n = n_blocks * t.block_size();
    let (a, b) = (dequantize_to_vec(t, ours, n).unwrap(), dequantize_to_vec(t, want, n).unwrap());
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    panic!("{t} {what}: {} of {n_blocks} blocks differ (first {:?}), max |dequant diff| {max_diff}", bad.len(), &bad[..bad.len().min(8)]);
}

#[test]
fn dequantize_is_bitwise_equal_to_llama_cpp() {
    let m = manifest();
    let types = m["types"].as_object().expect("types");
    assert!(types.len() >= 20, "fixture covers every required type");
    for (name, entry) in types {
        let t = ty(name);
        let q = read_bytes(entry["quant"].as_str().unwrap());
        let want = f32s(&read_bytes(entry["dequant"].as_str().unwrap()));
        let got = dequantize_to_vec(t, &q, want.len()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name} element {i}: {g} vs llama.cpp {w}");
        }
    }
}

#[test]
fn quantize_is_byte_equal_to_llama_cpp() {
    let m = manifest();
    let input = f32s(&read_bytes(m["input"]["file"].as_str().unwrap()));
    for (name, entry) in m["types"].as_object().unwrap() {
        let t = ty(name);
        let want = read_bytes(entry["quant"].as_str().unwrap());
        let ours = quantize_to_vec(t, &input).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same_bytes(t, &ours, &want, "hand-shaped input");
    }
}

#[test]
fn float_conversions_match_llama_cpp_on_nan_inf_and_ties() {
    let m = manifest();
    let input = f32s(&read_bytes(m["specials"]["input"].as_str().unwrap()));
    for name in ["F16", "BF16"] {
        let t = ty(name);
        let want = read_bytes(m["specials"][name].as_str().unwrap());
        let ours = quantize_to_vec(t, &input).unwrap();
        for (i, (o, w)) in ours.chunks(2).zip(want.chunks(2)).enumerate() {
            assert_eq!(o, w, "{name} element {i} = {:#010x}", input[i].to_bits());
        }
    }
}

/// The bulk input of the fixture script: xorshift32, triangular 24-bit integers, rare x16
/// outliers, zeroed sub-groups, and a power-of-two scale per row (all exact in f32).
fn xorshift_input(rows: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    (0..rows * 256)
        .map(|i| {
            let row = i / 256;
            let (a, b, c) = (next(), next(), next());
            let mut v = (a >> 9) as i64 + (b >> 9) as i64 - (1 << 23);
            if c & 0xFF == 0 {
                v *= 16;
            }
            if row % 7 == 3 && (i % 256) / 32 % 3 == 1 {
                v = 0;
            }
            (v as f64 * 2f64.powi((row % 17) as i32 - 36)) as f32
        })
        .collect()
}

fn check_row_hashes(what: &str, input: &[f32], hashes: &serde_json::Map<String, Value>) {
    for (name, want) in hashes {
        let t = ty(name);
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|h| h.as_u64().unwrap() as u32).collect();
        let ours = quantize_to_vec(t, input).unwrap();
        let row_bytes = 256 / t.block_size() * t.type_size();
        let bad: Vec<usize> =
            ours.chunks(row_bytes).zip(&want).enumerate().filter(|(_, (r, &h))| fnv1a32(r) != h).map(|(i, _)| i).collect();
        assert_eq!(ours.len() / row_bytes, want.len(), "{name} {what}: row count");
        assert!(
            bad.is_empty(),
            "{name} {what}: {} of {} rows differ from llama.cpp (first {:?})",
            bad.len(),
            want.len(),
            &bad[..bad.len().min(8)]
        );
    }
}

#[test]
fn quantize_matches_llama_cpp_on_bulk_pseudo_random_rows() {
    let m = manifest();
    let bulk = &m["bulk"];
    let input = xorshift_input(bulk["rows"].as_u64().unwrap() as usize, bulk["seed"].as_u64().unwrap() as u32);
    check_row_hashes("bulk", &input, bulk["row_hashes"].as_object().unwrap());
}

#[test]
fn quantize_matches_llama_cpp_on_real_f16_weights() {
    let m = manifest();
    let rw = &m["real_weights"];
    let n = rw["n"].as_u64().unwrap() as usize;
    let raw = model_bytes(rw["file"].as_str().unwrap(), rw["offset"].as_u64().unwrap(), 2 * n);
    let input = dequantize_to_vec(GgmlType::F16, &raw, n).unwrap();
    assert!(input.iter().any(|&v| v != 0.0), "read real weights, not zeros");
    check_row_hashes("real weights", &input, rw["row_hashes"].as_object().unwrap());
}

#[test]
fn real_model_tensors_dequantize_like_llama_cpp() {
    let m = manifest();
    let tensors = m["real_tensors"].as_array().unwrap();
    let types: Vec<&str> = tensors.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for want in ["Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"] {
        assert!(types.contains(&want), "fixture has a real {want} tensor");
    }
    for e in tensors {
        let t = ty(e["type"].as_str().unwrap());
        let raw = model_bytes(e["file"].as_str().unwrap(), e["offset"].as_u64().unwrap(), e["nbytes"].as_u64().unwrap() as usize);
        let want = f32s(&read_bytes(e["expected"].as_str().unwrap()));
        assert_eq!(want.len() as u64, e["n"].as_u64().unwrap());
        let got = dequantize_to_vec(t, &raw, want.len()).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{t} {} element {i}", e["tensor"]);
        }
    }
}

/// Relative RMS error of a round trip, per row, against the f64 input: bounded by what each
/// bit width allows (about range / 2^bits / sqrt(12) relative to RMS, with head-room for
/// outlier rows). Rows whose values are all equal or zero are skipped here (covered above).
#[test]
fn round_trip_error_is_within_bit_width_bounds() {
    let m = manifest();
    let input = f32s(&read_bytes(m["input"]["file"].as_str().unwrap()));
    let bounds: &[(GgmlType, f64)] = &[
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 3e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q8_1, 0.01),
        (GgmlType::Q8_K, 0.02), // one scale per 256: row 8 mixes group scales 1e-2..1e2
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_0, 0.06),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q5_K, 0.06),
        (GgmlType::Q4_0, 0.12),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::Q4_K, 0.12),
        (GgmlType::IQ4_NL, 0.12),
        (GgmlType::IQ4_XS, 0.12),
        (GgmlType::MXFP4, 0.2),
        (GgmlType::Q3_K, 0.22),
        (GgmlType::Q2_K, 0.4),
    ];
    for &(t, bound) in bounds {
        let q = quantize_to_vec(t, &input).unwrap();
        let y = dequantize_to_vec(t, &q, input.len()).unwrap();
        for (r, (xr, yr)) in input.chunks(256).zip(y.chunks(256)).enumerate() {
            if r == 4 {
                // One outlier 250x the rest: its group's small values are legitimately lost;
                // what must survive is the outlier itself.
                assert!((yr[37] - 25.0).abs() < 25.0 * 0.1, "{t}: outlier 25.0 decoded as {}", yr[37]);
                continue;
            }
            let sx: f64 = xr.iter().map(|&v| (v as f64).powi(2)).sum();
            if sx == 0.0 || xr.iter().all(|&v| v == xr[0]) {
                continue;
            }
            // Row 12 (|x| ~ 1e-16) is below f16's range: every f16-scaled type flushes it to
            // zero, as llama.cpp does. Only the f32-scaled types must still resolve it.
            let f32_scaled = matches!(t, GgmlType::BF16 | GgmlType::Q8_K);
            if !f32_scaled && xr.iter().all(|v| v.abs() < 1e-6) {
                continue;
            }
            let se: f64 = xr.iter().zip(yr).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
            let rel = (se / sx).sqrt();
            assert!(rel < bound, "{t} row {r}: relative RMS error {rel:.4} >= {bound}");
        }
    }
}

#[test]
fn wrong_lengths_and_unsupported_types_are_errors() {
    for &t in GgmlType::ALL {
        let bs = t.block_size();
        if can_quantize(t) {
            let x = vec![0.5f32; 256];
            let mut q = quantize_to_vec(t, &x).unwrap();
            assert_eq!(q.len() as u64, t.row_bytes(256).unwrap());
            assert!(matches!(quantize(t, &x, &mut q[1..]), Err(QuantError::BadLength { .. })), "{t}");
            if bs > 1 {
                assert!(matches!(quantize_to_vec(t, &x[..bs - 1]), Err(QuantError::NotBlockAligned { .. })), "{t}");
            }
            let mut y = vec![0f32; 256];
            assert!(matches!(dequantize(t, &q[..q.len() - 1], &mut y), Err(QuantError::BadLength { .. })), "{t}");
            assert!(matches!(dequantize_to_vec(t, &q, 512), Err(QuantError::BadLength { .. })), "{t}");
        } else {
            assert!(matches!(quantize_to_vec(t, &[0.0; 256]), Err(QuantError::Unsupported { .. })), "{t}");
        }
        if !can_dequantize(t) {
            let raw = vec![0u8; t.row_bytes(256).unwrap() as usize];
            assert!(matches!(dequantize_to_vec(t, &raw, 256), Err(QuantError::Unsupported { .. })), "{t}");
        }
    }
    assert!(can_dequantize(GgmlType::Q4_K) && can_quantize(GgmlType::IQ4_XS));
}

/// Hostile inputs: random block bytes (any f16 scale, NaN included) and random f32 bit
/// patterns (NaN, inf, huge) must never panic, and valid finite output stays finite where
/// the scale is finite.
#[test]
fn hostile_bytes_and_floats_never_panic() {
    let mut s = 0x9E37_79B9u32;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    for &t in GgmlType::ALL {
        let n = 1024;
        if can_dequantize(t) {
            let raw: Vec<u8> = (0..t.row_bytes(n as u64).unwrap()).map(|_| next() as u8).collect();
            dequantize_to_vec(t, &raw, n).unwrap();
        }
        if can_quantize(t) {
            let x: Vec<f32> = (0..n).map(|_| f32::from_bits(next())).collect();
            quantize_to_vec(t, &x).unwrap();
            let big: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 3e38 } else { -1e30 }).collect();
            quantize_to_vec(t, &big).unwrap();
        }
    }
    // A sanity anchor that the f16 decoder is the one used by the quants (1.0 = 0x3c00).
    assert_eq!(f16_to_f32(0x3c00), 1.0);
}

/// The lattice types' random blocks of the fixture script (xorshift32 bytes, f16 scale forced
/// into a finite range).
fn lattice_blocks(t: GgmlType, nblocks: usize, seed: u32) -> Vec<u8> {
    let mut s = seed;
    let ts = t.type_size();
    let mut out = Vec::with_capacity(nblocks * ts);
    for _ in 0..nblocks {
        let start = out.len();
        for _ in 0..ts {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            out.push(s as u8);
        }
        let blk = &mut out[start..];
        if t == GgmlType::IQ1_M {
            blk[55] = (blk[55] & 0x0F) | 0x20;
        } else {
            blk[1] = (blk[1] & 0x03) | 0x24;
        }
    }
    out
}

#[test]
fn lattice_iq_types_dequantize_like_llama_cpp() {
    let m = manifest();
    let lat = &m["lattice"];
    let types = lat["types"].as_object().unwrap();
    assert_eq!(types.len(), 7, "IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M");
    let nblocks = lat["blocks"].as_u64().unwrap() as usize;
    let seed = lat["seed"].as_u64().unwrap() as u32;
    for (name, e) in types {
        let t = ty(name);
        assert!(can_dequantize(t) && !can_quantize(t), "{name}");
        let q = read_bytes(e["quant"].as_str().unwrap());
        assert_eq!(q, lattice_blocks(t, nblocks, seed ^ t.id()), "{name}: block generator matches the script");
        let want = f32s(&read_bytes(e["dequant"].as_str().unwrap()));
        let got = dequantize_to_vec(t, &q, want.len()).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name} element {i}: {g} vs llama.cpp {w}");
        }
        // 512 more blocks, compared through per-block hashes of the decoded f32 bits.
        let bulk = lattice_blocks(t, 512, e["bulk_seed"].as_u64().unwrap() as u32);
        let y = dequantize_to_vec(t, &bulk, 512 * 256).unwrap();
        let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        let want: Vec<u32> = e["bulk_hashes"].as_array().unwrap().iter().map(|h| h.as_u64().unwrap() as u32).collect();
        let bad = bytes.chunks(1024).zip(&want).filter(|(c, &h)| fnv1a32(c) != h).count();
        assert_eq!(bad, 0, "{name}: {bad} of 512 blocks decode differently from llama.cpp");
    }
}
