//! A KV cache whose V is the first `head_dim_v` columns of K (`KvCache::with_v_in_k`, MLA's latent
//! cache) against an ordinary cache given those same columns as V: attention over the two must
//! agree bit for bit, for every cache type (f16, q8_0, fp8), prefill and decode, one and several
//! KV heads; the latent cache stores no V rows at all.

use rocmforge_cpu::{attention, AttnParams, KvCache, KvCacheType, ThreadPool};

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919 + seed * 104729) % 1013) as f32 / 1013.0 - 0.5) * 2.0).collect()
}

#[test]
fn v_read_from_k_equals_a_separate_copy_of_those_columns() {
    let pool = ThreadPool::global();
    // dk = latent 64 + rope 32, dv = the latent's 64 (multiples of 32: q8_0 blocks).
    let (dk, dv, bs, n_blocks, n_tok) = (96usize, 64usize, 16usize, 4usize, 37usize);
    let table: Vec<u32> = vec![2, 0, 3, 1];
    for ty in [KvCacheType::F16, KvCacheType::Q8_0, KvCacheType::Fp8E4M3] {
        for (n_head, n_kv) in [(4usize, 1usize), (4, 2)] {
            let k = values(n_tok * n_kv * dk, 1);
            // V of the ordinary cache: the first dv columns of every K head row.
            let v: Vec<f32> = k.chunks_exact(dk).flat_map(|row| row[..dv].to_vec()).collect();
            let mut latent = KvCache::with_v_in_k(ty, 1, n_kv, dk, dv, bs, n_blocks).expect("latent cache");
            let mut plain = KvCache::with_type(ty, 1, n_kv, dk, dv, bs, n_blocks).expect("cache");
            assert!(latent.v_in_k() && !plain.v_in_k());
            assert!(latent.bytes() < plain.bytes(), "{ty:?}: the latent cache stores no V rows");
            let params = AttnParams { scale: Some(0.125), ..AttnParams::default() };
            // Prefill 30 tokens, then decode the rest one at a time.
            let mut pos = 0;
            for chunk in [30usize, 1, 1, 1, 1, 1, 1, 1] {
                let (k_c, v_c) = (&k[pos * n_kv * dk..(pos + chunk) * n_kv * dk], &v[pos * n_kv * dv..(pos + chunk) * n_kv * dv]);
                latent.write(0, &table, pos, k_c, &[], chunk).expect("latent write");
                plain.write(0, &table, pos, k_c, v_c, chunk).expect("write");
                let q = values(chunk * n_head * dk, 3 + pos);
                let (mut a, mut b) = (vec![0f32; chunk * n_head * dv], vec![1f32; chunk * n_head * dv]);
                attention(pool, &latent, 0, &table, &q, chunk, pos, n_head, &params, &mut a).expect("latent attention");
                attention(pool, &plain, 0, &table, &q, chunk, pos, n_head, &params, &mut b).expect("attention");
                assert_eq!(a, b, "{ty:?} {n_head}/{n_kv} heads, tokens {pos}..{}", pos + chunk);
                pos += chunk;
            }
            assert_eq!(pos, n_tok);
            // V read back from the latent cache is K's prefix.
            let (mut kr, mut vr) = (vec![0f32; dk], vec![0f32; dv]);
            latent.read(0, &table, 5, n_kv - 1, false, &mut kr).expect("read k");
            latent.read(0, &table, 5, n_kv - 1, true, &mut vr).expect("read v");
            assert_eq!(&kr[..dv], &vr[..], "{ty:?}");
        }
    }
}

#[test]
fn latent_cache_stores_k_only_and_refuses_bad_widths() {
    let plain = KvCache::with_type(KvCacheType::F16, 2, 1, 40, 32, 16, 4).expect("cache");
    let latent = KvCache::with_v_in_k(KvCacheType::F16, 2, 1, 40, 32, 16, 4).expect("latent cache");
    // f16: 2 bytes per value; the plain cache holds 40 + 32 values per token, the latent one 40.
    assert_eq!(plain.bytes(), 2 * 2 * 4 * 16 * (40 + 32));
    assert_eq!(latent.bytes(), 2 * 2 * 4 * 16 * 40);
    assert!(KvCache::with_v_in_k(KvCacheType::F16, 1, 1, 40, 41, 16, 4).is_err(), "V wider than K");
    assert!(KvCache::with_v_in_k(KvCacheType::F16, 1, 1, 40, 0, 16, 4).is_err(), "empty V");
    // q8_0 rows are blocks of 32: V must be a whole-block prefix of K.
    let e = KvCache::with_v_in_k(KvCacheType::Q8_0, 1, 1, 64, 40, 16, 4).err().expect("q8_0 V of 40");
    assert!(e.to_string().contains("40"), "{e}");
}
