use rocmforge_cpu::{rope, swiglu, rms_norm, RopeParams};

#[test]
fn ops_diag() {
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read("/tmp/dump.json").unwrap()).unwrap();
    let raw = std::fs::read("/tmp/dump.bin").unwrap();
    let get = |k: &str| -> Vec<f32> {
        let e = &idx[k];
        let (off, n) = (e["off"].as_u64().unwrap() as usize, e["n"].as_u64().unwrap() as usize);
        raw[off * 4..(off + n) * 4].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let cmp = |what: &str, a: &[f32], b: &[f32]| {
        let nd: Vec<usize> = a.iter().zip(b).enumerate().filter(|(_, (x, y))| x.to_bits() != y.to_bits()).map(|(i, _)| i).collect();
        if !nd.is_empty() {
            let md = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            eprintln!("{what}: {} differ (first {:?}), max {md}", nd.len(), &nd[..nd.len().min(5)]);
        }
    };
    let p = RopeParams { n_rot: 64, neox: std::env::var("NEOX").is_ok(), freq_base: 100000.0, freq_scale: 1.0, ext_factor: 0.0, attn_factor: 1.0, beta_fast: 32.0, beta_slow: 1.0, n_ctx_orig: 8192, freq_factors: None };
    for il in 0..30 {
        for (name, nh) in [("Qcur", 9usize), ("Kcur", 3)] {
            let mut x = get(&format!("{name}-{il}#0"));
            rope(&mut x, 3, nh, 64, &[0, 1, 2], &p);
            cmp(&format!("rope {name} layer {il}"), &x, &get(&format!("{name}-{il}#2")));
        }
        let g = get(&format!("ffn_gate-{il}#0"));
        let u = get(&format!("ffn_up-{il}#0"));
        let mut o = vec![0f32; g.len()];
        swiglu(&g, &u, &mut o);
        cmp(&format!("swiglu layer {il}"), &o, &get(&format!("ffn_swiglu-{il}#0")));
        let x = get(&format!("ffn_inp-{il}#0"));
        let mut o = vec![0f32; x.len()];
        rms_norm(&x, None, 1e-5, 576, &mut o);
        cmp(&format!("rms_norm layer {il}"), &o, &get(&format!("norm-{il}#1")));
    }
}

#[test]
fn rope_variants() {
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read("/tmp/dump.json").unwrap()).unwrap();
    let raw = std::fs::read("/tmp/dump.bin").unwrap();
    let get = |k: &str| -> Vec<f32> {
        let e = &idx[k];
        let (off, n) = (e["off"].as_u64().unwrap() as usize, e["n"].as_u64().unwrap() as usize);
        raw[off * 4..(off + n) * 4].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let p = RopeParams { n_rot: 64, neox: false, freq_base: 100000.0, freq_scale: 1.0, ext_factor: 0.0, attn_factor: 1.0, beta_fast: 32.0, beta_slow: 1.0, n_ctx_orig: 8192, freq_factors: None };
    for v in 0..9 {
        let mut bad = 0;
        for il in 0..30 {
            let pre = get(&format!("Qcur-{il}#0"));
            let want = get(&format!("Qcur-{il}#2"));
            for t in 0..3 {
                let mut cache = vec![0f32; 64];
                rocmforge_cpu::rope_cache(t as f32, &p, &mut cache);
                for h in 0..9 {
                    for i0 in (0..64).step_by(2) {
                        let b = t * 576 + h * 64 + i0;
                        let (x0, x1, c, s) = (pre[b], pre[b + 1], cache[i0], cache[i0 + 1]);
                        let y0 = match v / 3 { 0 => x0 * c - x1 * s, 1 => x0.mul_add(c, -(x1 * s)), _ => (-x1).mul_add(s, x0 * c) };
                        let y1 = match v % 3 { 0 => x0 * s + x1 * c, 1 => x0.mul_add(s, x1 * c), _ => x1.mul_add(c, x0 * s) };
                        bad += (y0.to_bits() != want[b].to_bits()) as usize + (y1.to_bits() != want[b + 1].to_bits()) as usize;
                    }
                }
            }
        }
        eprintln!("variant {v}: {bad} differ");
    }
}
