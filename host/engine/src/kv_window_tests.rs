//! Tests of the KV cache manager's sliding-window groups (`kv_manager.rs`): blocks given back as
//! positions advance, each chunk's first query keeping its window, everything freed on
//! preemption and cancel, prefix hits of sliding groups, and the per-sequence bound the model
//! loader sizes the pool with. The random request streams of `kv_manager.rs` run every group
//! layout too; these pin the exact numbers of small cases.

use super::*;
use crate::block_pool::test_rng::Rng;

const W: usize = 8;
const BS: usize = 4;

fn ok(m: &KvCacheManager) {
    if let Err(e) = m.check_invariants() {
        panic!("invariant violated: {e}");
    }
}

fn full_and_sliding(n_blocks: usize, prefix: bool) -> KvCacheManager {
    KvCacheManager::with_groups(n_blocks, BS, prefix, &[KvKind::Full, KvKind::Sliding(W)])
}

/// Compute `tokens[from..to]` of `req` as the scheduler does: allocate, (write), cache, give
/// back what fell behind the window. Returns the blocks given back.
fn step(m: &mut KvCacheManager, req: RequestId, tokens: &[u32], to: usize) -> usize {
    m.allocate_slots(req, to, &[]).expect("room");
    m.cache_full_blocks(req, tokens, to, None);
    let freed = m.remove_skipped_blocks(req, to);
    ok(m);
    freed
}

fn nulls(t: &[u32]) -> usize {
    t.iter().take_while(|&&b| b == NULL_BLOCK).count()
}

#[test]
fn sliding_group_gives_back_blocks_as_positions_advance() {
    let mut m = full_and_sliding(64, false);
    let tokens: Vec<u32> = (0..40).collect();
    // Prefill 20 tokens in chunks of 4, then decode one token at a time up to 40.
    let mut given_back = 0;
    for to in (4..=20).step_by(4).chain(21..=40) {
        given_back += step(&mut m, 1, &tokens, to);
        let t = m.block_tables(1);
        // The next query is at `to`: it reads keys from to + 1 - W on; every block wholly
        // before that is given back, every block from it on is held.
        let first_key = (to + 1).saturating_sub(W);
        assert_eq!(nulls(&t[1]), first_key / BS, "after {to} tokens");
        assert_eq!(nulls(&t[0]), 0, "the full group keeps everything");
        assert_eq!(t[0].len(), to.div_ceil(BS));
        assert_eq!(m.num_held_blocks(1), t[0].len() + t[1].len() - first_key / BS);
    }
    // 40 tokens: the full group holds 10 blocks, the sliding one blocks 8 and 9 (keys 33..40).
    assert_eq!(given_back, 8);
    assert_eq!(m.num_held_blocks(1), 12);
    assert_eq!(m.num_free_blocks(), 64 - 12);
    m.free(1);
    ok(&m);
    assert_eq!(m.num_free_blocks(), 64);
    assert!((0..64).all(|b| m.pool.ref_cnt(b) == 0), "reference counts back to zero");
}

#[test]
fn a_chunk_keeps_the_window_of_its_first_query() {
    // The diagram of the module header: 13 tokens computed, window 8, blocks of 4.
    let mut m = full_and_sliding(32, false);
    let tokens: Vec<u32> = (0..30).collect();
    assert_eq!(step(&mut m, 1, &tokens, 13), 1, "block 0 (positions 0..3) is behind keys 6..");
    let t = m.block_tables(1).to_vec();
    assert_eq!(t[1][0], NULL_BLOCK);
    assert!(t[1][1..].iter().all(|&b| b != NULL_BLOCK), "positions 6 and 7 (block 1) are still read");
    // A 10-token chunk from 13: its last query (22) needs only keys 15.., but its first (13)
    // needs 6..: nothing more may go before the chunk runs.
    m.allocate_slots(1, 23, &[]).unwrap();
    assert_eq!(nulls(&m.block_tables(1)[1]), 1);
    m.cache_full_blocks(1, &tokens, 23, None);
    assert_eq!(m.remove_skipped_blocks(1, 23), 3, "then blocks 1..3 (positions ..15) go: the next query (23) reads 16..");
    assert_eq!(nulls(&m.block_tables(1)[1]), 4);
    // Giving back is idempotent and never goes backwards.
    assert_eq!(m.remove_skipped_blocks(1, 23), 0);
    assert_eq!(m.remove_skipped_blocks(1, 5), 0);
    ok(&m);
}

#[test]
fn preemption_and_cancel_free_every_group() {
    let mut m = KvCacheManager::with_groups(60, BS, true, &[KvKind::Sliding(W), KvKind::Full, KvKind::Sliding(5)]);
    let a: Vec<u32> = (0..30).collect();
    let b: Vec<u32> = (100..117).collect();
    for to in [8, 16, 24, 30] {
        step(&mut m, 1, &a, to);
    }
    step(&mut m, 2, &b, 12);
    assert!(m.block_tables(1)[0].contains(&NULL_BLOCK) && m.block_tables(1)[2].contains(&NULL_BLOCK));
    // Preempt 2 (free, recompute later), then resume it from its cached prefix.
    m.free(2);
    ok(&m);
    let (ids, hit) = m.get_computed_blocks(&b, None);
    assert_eq!(hit, 12);
    m.allocate_slots(2, 17, &ids).unwrap();
    ok(&m);
    m.cache_full_blocks(2, &b, 17, None);
    m.remove_skipped_blocks(2, 17);
    ok(&m);
    // Cancel both mid-way.
    m.free(1);
    m.free(2);
    ok(&m);
    assert_eq!((m.num_free_blocks(), m.num_requests()), (60, 0));
    assert!((0..60).all(|b| m.pool.ref_cnt(b) == 0));
}

#[test]
fn sliding_prefix_hit_takes_only_the_window_and_needs_the_whole_chain() {
    let mut m = full_and_sliding(40, true);
    let p: Vec<u32> = (0..30).collect();
    for to in [12, 24, 30] {
        step(&mut m, 1, &p, to);
    }
    let first = m.block_tables(1).to_vec();
    m.free(1);
    // The same prompt again: 7 full blocks (28 tokens; never the last token) hit in both
    // groups. The first token to compute (28) reads keys 21.., so the sliding group takes
    // blocks 5 and 6 and leaves 0..4 where they are (free, still cached).
    let (ids, hit) = m.get_computed_blocks(&p, None);
    assert_eq!(hit, 28);
    assert_eq!(&ids[..7], &first[0][..7]);
    assert_eq!(&ids[7..12], &[NULL_BLOCK; 5]);
    let free_before = m.num_free_blocks();
    m.allocate_slots(2, 30, &ids).unwrap();
    // Taken: 7 + 2 hits, 1 new block per group.
    assert_eq!(free_before - m.num_free_blocks(), 9 + 2);
    ok(&m);
    // Evict the first sliding blocks (the oldest free ones): the sliding chain now breaks at its
    // first block, so the same prompt no longer hits at all, although the full group's blocks
    // are all held by request 2 (the rule: a hit needs every group's chain from the start).
    let n = m.num_free_blocks();
    m.allocate_slots(3, (n / 2) * BS, &[]).unwrap();
    assert_eq!(m.get_computed_blocks(&p, None), (Vec::new(), 0));
    m.free(3);
    m.free(2);
    ok(&m);
    assert_eq!(m.num_free_blocks(), 40);
}

#[test]
fn computed_blocks_must_split_into_groups() {
    let mut m = full_and_sliding(16, true);
    let p: Vec<u32> = (0..13).collect();
    step(&mut m, 1, &p, 13);
    m.free(1);
    let (ids, _) = m.get_computed_blocks(&p, None);
    assert_eq!(ids.len(), 6);
    assert_eq!(m.allocate_slots(2, 13, &ids[..5]), Err(KvError::MalformedComputedBlocks { len: 5, n_groups: 2 }));
    // A given-back entry in a full group's hit, or at the end of a sliding group's, is refused.
    let mut bad = ids.clone();
    bad[0] = NULL_BLOCK;
    assert!(matches!(m.allocate_slots(2, 13, &bad), Err(KvError::StaleComputedBlock { .. })));
    let mut bad = ids.clone();
    bad[5] = NULL_BLOCK;
    assert!(matches!(m.allocate_slots(2, 13, &bad), Err(KvError::StaleComputedBlock { .. })));
    // The groups' hits swapped: refused.
    let swapped: Vec<u32> = ids[3..].iter().chain(&ids[..3]).copied().collect();
    assert!(matches!(m.allocate_slots(2, 13, &swapped), Err(KvError::StaleComputedBlock { .. })));
    assert_eq!(m.num_requests(), 0);
    m.allocate_slots(2, 13, &ids).unwrap();
    ok(&m);
}

/// What the model loader sizes the pool with: whatever the chunking and prefix hits, one
/// sequence never holds more than `max_blocks_per_seq` blocks, and with full groups only it
/// holds exactly a block per group and block of positions.
#[test]
fn max_blocks_per_seq_bounds_what_a_sequence_holds() {
    let mut rng = Rng::new(7);
    for _ in 0..400 {
        let bs = rng.range(1, 6);
        let groups: Vec<KvKind> =
            (0..rng.range(1, 4)).map(|_| if rng.chance(0.4) { KvKind::Full } else { KvKind::Sliding(rng.range(1, 20)) }).collect();
        let max_chunk = rng.range(1, 12);
        let len = rng.range(1, 80);
        let mut m = KvCacheManager::with_groups(4096, bs, true, &groups);
        let tokens: Vec<u32> = (0..len as u32).map(|t| t % 5).collect();
        // A first run caches the prefix; the second starts from its hit.
        for req in 0..2 {
            let (ids, hit) = m.get_computed_blocks(&tokens, None);
            let mut at = hit;
            let mut first = Some(ids);
            while at < len {
                let to = (at + rng.range(1, max_chunk)).min(len);
                m.allocate_slots(req, to, &first.take().unwrap_or_default()).unwrap();
                let bound = max_blocks_per_seq(&groups, bs, len, max_chunk);
                assert!(m.num_held_blocks(req) <= bound, "{groups:?} bs {bs} chunk {max_chunk}: {} > {bound}", m.num_held_blocks(req));
                m.cache_full_blocks(req, &tokens, to, None);
                m.remove_skipped_blocks(req, to);
                at = to;
            }
            ok(&m);
            if groups.iter().all(|k| *k == KvKind::Full) {
                assert_eq!(m.num_held_blocks(req), len.div_ceil(bs) * groups.len());
            }
            m.free(req);
        }
        assert_eq!(m.num_free_blocks(), 4096);
    }
}
