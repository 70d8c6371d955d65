//! Single-thread quantize/dequantize throughput per type (a measurement, not a test):
//! `cargo run --release -p rocmforge-quant --example quant_speed`.
//! A 135M-parameter model is ~135 M elements; divide by the printed rate and by the caller's
//! thread count for the expected quantize time.

use rocmforge_quant::{can_quantize, dequantize, quantize, GgmlType};
use std::time::Instant;

fn main() {
    let n = 1 << 20;
    let mut s = 0x1234_5678u32;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1 << 24) as f32 - 0.5
        })
        .collect();
    let mut y = vec![0f32; n];
    for &t in GgmlType::ALL {
        if !can_quantize(t) {
            continue;
        }
        let mut q = vec![0u8; t.row_bytes(n as u64).unwrap() as usize];
        let t0 = Instant::now();
        quantize(t, &x, &mut q).unwrap();
        let tq = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        dequantize(t, &q, &mut y).unwrap();
        let td = t0.elapsed().as_secs_f64();
        println!("{:7} quantize {:8.1} M elem/s   dequantize {:8.1} M elem/s", t.name(), n as f64 / tq / 1e6, n as f64 / td / 1e6);
    }
}
