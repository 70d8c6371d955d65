//! The KV cache manager: which request holds which KV blocks, and the prefix cache that lets
//! requests (and the turns of a chat) share the blocks of a common prefix. This is the API the
//! scheduler calls; it speaks request ids, block ids and token counts, never GPU types.
//!
//! Modelled on vLLM v1's `KVCacheManager` / `HybridKVCacheCoordinator` and its
//! `SlidingWindowManager` (`vllm/v1/core/kv_cache_manager.py`, `single_type_kv_cache_manager.py`);
//! our own code. The pool underneath (free queue, hashes, eviction) is `block_pool.rs`.
//!
//! One request's block table and what `allocate_slots` adds (block_size 4):
//!
//! ```text
//!  tokens:   | 0  1  2  3 | 4  5  6  7 | 8  9  10 11 | 12 13 __ __ |
//!  blocks:   [    17     ][     3     ][     8      ][     21     ]
//!            '--- computed blocks ---' '--- new, this step -------'
//!             (prefix-cache hits:       allocate_slots(req, 14, &[17, 3])
//!              shared, read only)
//!  after the forward pass: cache_full_blocks(req, tokens, 12) hashes block 8 (full);
//!  block 21 holds 2 of 4 tokens: the partial last block is always private, never cached.
//! ```
//!
//! Hashes are chained: `h(block i) = hash(h(block i-1), tokens of block i, salt if i == 0)`, so
//! a block is a hit only if every block before it is. A lookup never covers the last token of a
//! prompt: at least one token is computed, which produces the logits to sample from.
//!
//! KV cache groups (`rocmforge_runtime::KvLayout`): a model with sliding-window layers apart
//! from full ones has several groups, and every request one table per group, all as long as
//! each other (one entry per block of positions). Blocks all come from the one pool. A sliding
//! group with window `w` gives back, as positions advance, every block whose positions are all
//! before the window of the next query to compute (`num_computed_tokens`, the earliest query of
//! the next chunk: each query of a chunk needs its own window), and its table keeps
//! [`NULL_BLOCK`] there (window 8, block_size 4, 13 tokens computed: keys from 13 + 1 - 8 = 6):
//!
//! ```text
//!  positions:      | 0 .. 3 | 4 .. 7 | 8 .. 11 | 12 13 |
//!  full group:     [   17   ][   3   ][   8    ][  21  ]
//!  sliding group:  [  NULL  ][   5   ][   9    ][  30  ]   block 5 stays: positions 6, 7 are read
//! ```
//!
//! Prefix caching with groups: each group caches its own blocks under the same chained hashes
//! (the pool keys them by group). A prefix of n blocks is a hit only if every group still has
//! all n blocks cached, from the first one on, a sliding group included (the simplest correct
//! rule: vLLM searches a sliding group from the right and needs only the blocks inside the
//! window, but our hits are verified exactly through each block's cached parent, so a chain
//! must be whole). A sliding group then takes only the hit blocks inside the window of the first
//! token to compute (and always the last hit block, which the chain continues from); the others
//! stay in the pool as they were.
//!
//! Invariants (checked by [`KvCacheManager::check_invariants`], besides the pool's own):
//! - for every block, `ref_cnt` equals the number of request tables that list it; no request
//!   lists a block twice (in any of its tables); a block is listed by tables of one group only;
//! - a request's tables are equally long; a full group's table has no `NULL_BLOCK`, a sliding
//!   group's has them exactly before its first held block;
//! - a request's first `num_cached_blocks` blocks are hashed (or stand in for an identical cached
//!   block); the blocks after them are private to the request until they are cached;
//! - a request writes K/V only past its computed prefix, i.e. into blocks that are not cached
//!   and held by it alone: shared blocks are read-only, so no copy-on-write is needed.
//!
//! The call sequence, per step, for each scheduled request:
//!
//! ```text
//!   new / resumed:  get_computed_blocks -> allocate_slots(req, n, &computed)   (no allocation of
//!                                                                              another request in between)
//!   running:        allocate_slots(req, num_computed_tokens + num_new_tokens, &[])
//!   after forward:  cache_full_blocks(req, all_tokens, num_computed_tokens)
//!                   remove_skipped_blocks(req, num_computed_tokens)   (sliding groups)
//!   finish/cancel/preempt: free(req)
//! ```

use std::collections::HashMap;

use rocmforge_runtime::{KvKind, NULL_BLOCK};

use crate::block_pool::{BlockHash, BlockPool, BlockRef, KvError};

pub type RequestId = u64;

/// Prefix-cache counters since the manager was made, in tokens (vLLM's `PrefixCacheStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// `get_computed_blocks` calls (admission attempts, retries included).
    pub requests: u64,
    /// Prompt tokens looked up.
    pub queries: u64,
    /// Of those, tokens found in the cache.
    pub hits: u64,
}

impl PrefixCacheStats {
    /// Hits over queries, 0 when nothing was queried.
    pub fn hit_rate(&self) -> f64 {
        if self.queries == 0 {
            0.0
        } else {
            self.hits as f64 / self.queries as f64
        }
    }
}

/// Most blocks one sequence of up to `n_tokens` positions holds at once in a pool of groups of
/// `kinds`, computed in chunks of at most `max_chunk` tokens: a full group a block per
/// `block_size` positions, a sliding group at most the blocks of its window plus a chunk plus
/// one (the window rarely starts on a block boundary). What sizes "one sequence always fits".
pub fn max_blocks_per_seq(kinds: &[KvKind], block_size: usize, n_tokens: usize, max_chunk: usize) -> usize {
    let all = n_tokens.div_ceil(block_size);
    kinds
        .iter()
        .map(|k| match k {
            KvKind::Full => all,
            KvKind::Sliding(w) => all.min((w.saturating_sub(1) + max_chunk).div_ceil(block_size) + 1),
        })
        .sum()
}

/// Where a request's hash chain stands in one group: the parent of its next block to cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chain {
    /// Nothing cached yet: the next block is a first block.
    Start,
    /// The cached block standing for the last hashed block (the request's own block, or an
    /// identical one another request cached first).
    At(BlockRef),
    /// A block given back before it was cached (possible only if a caller frees past what it
    /// cached): this group caches nothing more for the request.
    Broken,
}

/// One request's tables and how far its prefix has been hashed, so that `cache_full_blocks`
/// continues the hash chain where it stopped instead of rehashing the whole prompt.
#[derive(Debug)]
struct ReqBlocks {
    /// One table per group, all of one length.
    tables: Vec<Vec<u32>>,
    /// Per group: entries before this index are `NULL_BLOCK` (always 0 for full groups).
    num_skipped: Vec<usize>,
    /// The first `num_cached_blocks` blocks have been hashed and registered (in every group
    /// whose chain is not broken).
    num_cached_blocks: usize,
    /// Hash of block `num_cached_blocks - 1` (the same in every group).
    last_hash: Option<BlockHash>,
    /// Per group.
    chains: Vec<Chain>,
}

impl ReqBlocks {
    fn new(n_groups: usize) -> Self {
        ReqBlocks {
            tables: vec![Vec::new(); n_groups],
            num_skipped: vec![0; n_groups],
            num_cached_blocks: 0,
            last_hash: None,
            chains: vec![Chain::Start; n_groups],
        }
    }

    /// Table entries (positions / block_size, rounded up) covered so far.
    fn len(&self) -> usize {
        self.tables[0].len()
    }
}

#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    enable_prefix_caching: bool,
    /// Kind of each KV cache group (one full group for a model without sliding layers).
    groups: Vec<KvKind>,
    req_to_blocks: HashMap<RequestId, ReqBlocks>,
    stats: PrefixCacheStats,
}

impl KvCacheManager {
    /// One group of full layers: every layer shares one block table, nothing is given back
    /// before the request ends.
    pub fn new(n_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        Self::with_groups(n_blocks, block_size, enable_prefix_caching, &[KvKind::Full])
    }

    /// One block table per group of `groups` (the executor's `KvLayout::kinds()`), all from one
    /// pool of `n_blocks` blocks; sliding groups give back blocks behind their window.
    pub fn with_groups(n_blocks: usize, block_size: usize, enable_prefix_caching: bool, groups: &[KvKind]) -> Self {
        assert!(!groups.is_empty(), "a KV cache has at least one group");
        KvCacheManager {
            pool: BlockPool::new(n_blocks, block_size),
            enable_prefix_caching,
            groups: groups.to_vec(),
            req_to_blocks: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    pub fn n_blocks(&self) -> usize {
        self.pool.n_blocks()
    }

    /// The groups' kinds, in group order.
    pub fn groups(&self) -> &[KvKind] {
        &self.groups
    }

    /// Blocks that can ever be handed out (`n_blocks` less reserved blocks, if any).
    pub fn num_usable_blocks(&self) -> usize {
        self.pool.num_usable_blocks()
    }

    /// Free queue length: cached blocks no request references count as free.
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// `1 - free / usable` blocks.
    pub fn usage(&self) -> f32 {
        self.pool.usage()
    }

    pub fn enable_prefix_caching(&self) -> bool {
        self.enable_prefix_caching
    }

    /// Requests holding a block table (possibly empty).
    pub fn num_requests(&self) -> usize {
        self.req_to_blocks.len()
    }

    /// Full blocks currently in the prefix cache (referenced or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.pool.num_cached_blocks()
    }

    /// Blocks needed to hold `num_tokens` positions in every group (nothing given back yet). For
    /// a new request, pass the tokens beyond its cached prefix (`num_tokens -
    /// num_computed_tokens`: the prefix is whole blocks), and remember that cached blocks that
    /// are free still leave the free queue when taken.
    pub fn blocks_needed(&self, num_tokens: usize) -> usize {
        self.pool.blocks_for(num_tokens) * self.groups.len()
    }

    /// Longest run of cached full blocks matching the start of `tokens` (salted) in every group;
    /// never covers the last token, so at least one token is computed and produces logits: if
    /// every full block matches and `tokens.len()` is a multiple of the block size, the last
    /// block is dropped. Returns (block ids, `num_computed_tokens = n * block_size`) for n hit
    /// blocks: the ids are every group's n table entries one group after another (just the n
    /// blocks with one group), a sliding group's entries before its window `NULL_BLOCK` (module
    /// header). Takes no references: pass the ids to `allocate_slots` for the same request
    /// before allocating for anyone else (an allocation may evict them). Records query/hit
    /// token counts.
    pub fn get_computed_blocks(&mut self, tokens: &[u32], cache_salt: Option<&str>) -> (Vec<u32>, usize) {
        self.get_computed_blocks_memo(tokens, cache_salt, &mut Vec::new())
    }

    /// [`get_computed_blocks`](Self::get_computed_blocks) with the request's chained block hashes
    /// kept in `memo` between calls: a request that waits (no room this step) is looked up again
    /// every step, and its full blocks' hashes never change (its tokens only grow), so each is
    /// computed once (as vLLM keeps `request.block_hashes`). `memo` must belong to one request
    /// with one salt.
    pub fn get_computed_blocks_memo(&mut self, tokens: &[u32], cache_salt: Option<&str>, memo: &mut Vec<BlockHash>) -> (Vec<u32>, usize) {
        if !self.enable_prefix_caching {
            return (Vec::new(), 0);
        }
        let bs = self.block_size();
        // Full blocks that end before the last token.
        let max_blocks = tokens.len().saturating_sub(1) / bs;
        for (i, block_tokens) in tokens.chunks_exact(bs).enumerate().take(max_blocks).skip(memo.len()) {
            let salt = if i == 0 { cache_salt } else { None };
            memo.push(BlockHash::of(memo.last().copied(), block_tokens, salt.map(str::as_bytes)));
        }
        // Each group's chain from the first block, no longer than the shortest so far.
        let mut hit = max_blocks;
        let mut per_group: Vec<Vec<u32>> = Vec::with_capacity(self.groups.len());
        for g in 0..self.groups.len() {
            let mut ids = Vec::new();
            let mut parent: Option<BlockRef> = None;
            for (i, block_tokens) in tokens.chunks_exact(bs).take(hit).enumerate() {
                let salt = if i == 0 { cache_salt } else { None };
                let Some(r) = self.pool.get_cached_block(g as u32, memo[i], parent, block_tokens, salt) else {
                    break;
                };
                ids.push(r.id());
                parent = Some(r);
            }
            hit = ids.len();
            per_group.push(ids);
        }
        let mut out = Vec::with_capacity(hit * self.groups.len());
        for (ids, kind) in per_group.iter().zip(&self.groups) {
            let ids = &ids[..hit];
            // A sliding group takes the blocks inside the window of the first token to compute
            // (position hit * bs), and the last hit block in any case.
            let keep_from = match kind {
                KvKind::Full => 0,
                KvKind::Sliding(w) => ((hit * bs + 1).saturating_sub(*w) / bs).min(hit.saturating_sub(1)),
            };
            out.extend(std::iter::repeat_n(NULL_BLOCK, keep_from));
            out.extend_from_slice(&ids[keep_from..]);
        }
        let num_computed_tokens = hit * bs;
        self.stats.requests += 1;
        self.stats.queries += tokens.len() as u64;
        self.stats.hits += num_computed_tokens as u64;
        (out, num_computed_tokens)
    }

    /// Make `req`'s block tables cover `num_tokens` positions in total. On the request's first
    /// call, `new_computed_blocks` (from `get_computed_blocks`) are taken first (ref_cnt += 1,
    /// removed from the free queue if they were free), then fresh blocks are popped from the
    /// head of the free queue (evicting their hashes). All-or-nothing: on Err nothing changed.
    ///
    /// Errors: `OutOfKvBlocks { needed, free }` where `needed` counts every block that must
    /// leave the free queue (fresh ones plus free computed ones); `StaleComputedBlock` if a
    /// computed block was evicted since the lookup; `ComputedBlocksForRunningRequest` if the
    /// request already has a table and computed blocks are passed; `MalformedComputedBlocks`
    /// if their count is not a multiple of the number of groups.
    pub fn allocate_slots(&mut self, req: RequestId, num_tokens: usize, new_computed_blocks: &[u32]) -> Result<(), KvError> {
        let n_groups = self.groups.len();
        let held = self.req_to_blocks.get(&req).map(ReqBlocks::len);
        if !new_computed_blocks.is_empty() {
            if held.is_some() {
                return Err(KvError::ComputedBlocksForRunningRequest { req });
            }
            if !new_computed_blocks.len().is_multiple_of(n_groups) {
                return Err(KvError::MalformedComputedBlocks { len: new_computed_blocks.len(), n_groups });
            }
            for (g, ids) in new_computed_blocks.chunks_exact(new_computed_blocks.len() / n_groups).enumerate() {
                if self.groups[g] == KvKind::Full || ids.last() == Some(&NULL_BLOCK) {
                    // Only a sliding group's hit may start with given-back entries, and it ends
                    // with a held block.
                    if let Some(index) = ids.iter().position(|&b| b == NULL_BLOCK) {
                        return Err(KvError::StaleComputedBlock { block: NULL_BLOCK, index });
                    }
                }
                self.pool.verify_chain(g as u32, ids)?;
            }
        }
        let k = new_computed_blocks.len() / n_groups;
        let covered = held.unwrap_or(0) + k;
        let num_new = self.pool.blocks_for(num_tokens).saturating_sub(covered);
        let computed_free = new_computed_blocks.iter().filter(|&&b| b != NULL_BLOCK && self.pool.is_free(b)).count();
        let free = self.pool.num_free_blocks();
        if num_new * n_groups + computed_free > free {
            return Err(KvError::OutOfKvBlocks { needed: num_new * n_groups + computed_free, free });
        }

        let entry = self.req_to_blocks.entry(req).or_insert_with(|| ReqBlocks::new(n_groups));
        if k > 0 {
            // Touch before popping, so that the new blocks cannot evict the hits.
            let held: Vec<u32> = new_computed_blocks.iter().copied().filter(|&b| b != NULL_BLOCK).collect();
            self.pool.touch(&held);
            for (g, ids) in new_computed_blocks.chunks_exact(k).enumerate() {
                let last = ids[k - 1];
                entry.tables[g].extend_from_slice(ids);
                entry.num_skipped[g] = ids.iter().take_while(|&&b| b == NULL_BLOCK).count();
                entry.chains[g] = self.pool.cached_ref(last).map_or(Chain::Broken, Chain::At);
                if g == 0 {
                    entry.last_hash = self.pool.block_hash(last);
                }
            }
            entry.num_cached_blocks = k;
        }
        for table in &mut entry.tables {
            self.pool.get_new_blocks(num_new, table).expect("free blocks counted above");
        }
        Ok(())
    }

    /// `req`'s block table of group 0 (of every layer, with one group); empty if the request is
    /// unknown.
    pub fn block_table(&self, req: RequestId) -> &[u32] {
        self.req_to_blocks.get(&req).map_or(&[], |r| &r.tables[0])
    }

    /// `req`'s block tables, one per group; empty if the request is unknown.
    pub fn block_tables(&self, req: RequestId) -> &[Vec<u32>] {
        self.req_to_blocks.get(&req).map_or(&[], |r| &r.tables)
    }

    /// Blocks `req` holds now, over all groups (given-back entries not counted).
    pub fn num_held_blocks(&self, req: RequestId) -> usize {
        self.block_tables(req).iter().flatten().filter(|&&b| b != NULL_BLOCK).count()
    }

    /// After a forward pass wrote K/V for `tokens[..num_computed_tokens]` of `req`, register the
    /// request's newly full blocks in the prefix cache. Incremental: only blocks past the ones
    /// already hashed are hashed (O(new blocks) per call). The partial last block is never
    /// cached. `tokens` are all of the request's tokens (prompt and output so far); counts past
    /// `tokens` or past the block table are clamped. `cache_salt` must be the one used for the
    /// lookup. Unknown request or prefix caching off: no-op.
    pub fn cache_full_blocks(&mut self, req: RequestId, tokens: &[u32], num_computed_tokens: usize, cache_salt: Option<&str>) {
        if !self.enable_prefix_caching {
            return;
        }
        let bs = self.pool.block_size();
        let Some(r) = self.req_to_blocks.get_mut(&req) else {
            return;
        };
        let num_full = (num_computed_tokens.min(tokens.len()) / bs).min(r.len());
        for i in r.num_cached_blocks..num_full {
            let block_tokens = &tokens[i * bs..(i + 1) * bs];
            let salt = if i == 0 { cache_salt } else { None };
            let hash = BlockHash::of(r.last_hash, block_tokens, salt.map(str::as_bytes));
            for (g, (table, chain)) in r.tables.iter().zip(r.chains.iter_mut()).enumerate() {
                let parent = match *chain {
                    Chain::Start => None,
                    Chain::At(p) => Some(p),
                    Chain::Broken => continue,
                };
                if table[i] == NULL_BLOCK {
                    *chain = Chain::Broken;
                    continue;
                }
                *chain = Chain::At(self.pool.cache_full_block(g as u32, table[i], hash, parent, block_tokens, salt));
            }
            r.last_hash = Some(hash);
            r.num_cached_blocks = i + 1;
        }
    }

    /// Give back the blocks of `req`'s sliding groups whose positions are all before the
    /// window of the next query, at position `num_computed_tokens` (keys from
    /// `num_computed_tokens + 1 - w` on): their entries become `NULL_BLOCK`, the blocks enter the
    /// free queue (tail first; cached ones stay hits until evicted). Call after
    /// `cache_full_blocks`, whenever `num_computed_tokens` advances. Returns the blocks given
    /// back. Full groups and unknown requests: nothing.
    pub fn remove_skipped_blocks(&mut self, req: RequestId, num_computed_tokens: usize) -> usize {
        let bs = self.pool.block_size();
        let Some(r) = self.req_to_blocks.get_mut(&req) else {
            return 0;
        };
        let mut freed = 0;
        for (g, kind) in self.groups.iter().enumerate() {
            let KvKind::Sliding(w) = *kind else { continue };
            let table = &mut r.tables[g];
            let skip = ((num_computed_tokens + 1).saturating_sub(w) / bs).min(table.len());
            let from = r.num_skipped[g];
            if skip <= from {
                continue;
            }
            self.pool.free_blocks(table[from..skip].iter().rev().copied());
            table[from..skip].fill(NULL_BLOCK);
            r.num_skipped[g] = skip;
            freed += skip - from;
        }
        freed
    }

    /// Release every block of `req` (finish, cancel, preemption). Blocks enter the free queue
    /// tail first, position by position over the groups, so eviction takes the ends of prefixes
    /// before their beginnings; cached blocks stay hits until evicted. Unknown request: no-op.
    pub fn free(&mut self, req: RequestId) {
        if let Some(r) = self.req_to_blocks.remove(&req) {
            let n = r.len();
            let order = (0..n).rev().flat_map(|i| r.tables.iter().map(move |t| t[i])).filter(|&b| b != NULL_BLOCK);
            self.pool.free_blocks(order);
        }
    }

    /// Drop every cached hash (after a weight reload, or for benchmarks). Only allowed when no
    /// request holds blocks or a table (a sliding group's table may hold no block for a while,
    /// but its hash chain goes on); returns false otherwise. The counters are kept.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.req_to_blocks.is_empty() && self.pool.reset_prefix_cache()
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// The pool's invariants, then the manager's (module header); the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let n = self.pool.n_blocks();
        let mut refs = vec![0u32; n];
        let mut last_owner: Vec<Option<RequestId>> = vec![None; n];
        let mut owner_group: Vec<Option<usize>> = vec![None; n];
        for (&req, r) in &self.req_to_blocks {
            for (g, table) in r.tables.iter().enumerate() {
                if table.len() != r.len() {
                    return Err(format!("request {req}: table of group {g} has {} entries, group 0 {}", table.len(), r.len()));
                }
                let n_null = table.iter().take_while(|&&b| b == NULL_BLOCK).count();
                if n_null != r.num_skipped[g] || table[n_null..].contains(&NULL_BLOCK) {
                    return Err(format!("request {req}: group {g}'s given-back entries are not its first {}", r.num_skipped[g]));
                }
                if self.groups[g] == KvKind::Full && n_null > 0 {
                    return Err(format!("request {req}: full group {g} gave back {n_null} blocks"));
                }
                for &b in &table[n_null..] {
                    let i = b as usize;
                    if i >= n {
                        return Err(format!("request {req} holds block {b}, out of range"));
                    }
                    if last_owner[i] == Some(req) {
                        return Err(format!("request {req} lists block {b} twice"));
                    }
                    if owner_group[i].is_some_and(|o| o != g) {
                        return Err(format!("block {b} is listed by tables of groups {} and {g}", owner_group[i].unwrap_or(g)));
                    }
                    last_owner[i] = Some(req);
                    owner_group[i] = Some(g);
                    refs[i] += 1;
                }
            }
            if r.num_cached_blocks > r.len() {
                return Err(format!("request {req}: {} cached blocks of {}", r.num_cached_blocks, r.len()));
            }
            let started = r.chains.iter().any(|c| *c != Chain::Start);
            if (r.num_cached_blocks > 0) != r.last_hash.is_some() || r.last_hash.is_some() != started {
                return Err(format!("request {req}: hash cursor out of step ({} cached blocks)", r.num_cached_blocks));
            }
        }
        for (b, &count) in refs.iter().enumerate() {
            let rc = self.pool.ref_cnt(b as u32);
            if rc != count {
                return Err(format!("block {b}: ref_cnt {rc} but {count} tables list it"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "kv_window_tests.rs"]
mod window_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_pool::test_rng::Rng;

    fn ok(m: &KvCacheManager) {
        if let Err(e) = m.check_invariants() {
            panic!("invariant violated: {e}");
        }
    }

    /// Admit `req` with `tokens` as a prompt: look up, allocate the whole prompt, "compute" it
    /// and cache its full blocks. Returns the number of computed (hit) tokens.
    fn run_prompt(m: &mut KvCacheManager, req: RequestId, tokens: &[u32], salt: Option<&str>) -> usize {
        let (ids, hit) = m.get_computed_blocks(tokens, salt);
        m.allocate_slots(req, tokens.len(), &ids).expect("room for the prompt");
        assert_eq!(&m.block_table(req)[..ids.len()], ids.as_slice());
        m.cache_full_blocks(req, tokens, tokens.len(), salt);
        ok(m);
        hit
    }

    fn seq(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn exhaustion_is_all_or_nothing() {
        let mut m = KvCacheManager::new(4, 4, true);
        m.allocate_slots(1, 9, &[]).unwrap(); // 3 blocks
        assert_eq!(m.num_free_blocks(), 1);
        assert_eq!(m.allocate_slots(2, 8, &[]), Err(KvError::OutOfKvBlocks { needed: 2, free: 1 }));
        assert_eq!(m.block_table(2), &[] as &[u32], "a refused new request gets no table");
        assert_eq!(m.num_requests(), 1);
        assert_eq!(m.allocate_slots(1, 17, &[]), Err(KvError::OutOfKvBlocks { needed: 2, free: 1 }));
        assert_eq!(m.block_table(1).len(), 3, "a refused growth keeps the table");
        m.allocate_slots(1, 16, &[]).unwrap();
        assert_eq!((m.num_free_blocks(), m.usage()), (0, 1.0));
        m.allocate_slots(1, 10, &[]).unwrap(); // already covered: nothing to do
        ok(&m);
        m.free(1);
        m.free(1); // unknown now: no-op
        assert_eq!((m.num_free_blocks(), m.usage()), (4, 0.0));
        assert_eq!(m.blocks_needed(9), 3);
        ok(&m);
    }

    #[test]
    fn free_computed_blocks_count_against_the_free_queue() {
        let mut m = KvCacheManager::new(4, 2, true);
        let p = seq(0..7); // 3 full blocks + 1 token
        run_prompt(&mut m, 1, &p, None);
        m.free(1);
        let (ids, hit) = m.get_computed_blocks(&p, None);
        assert_eq!((ids.len(), hit), (3, 6));
        // 3 hits (free, cached) + 2 fresh = 5 blocks out of a 4-block queue.
        assert_eq!(m.allocate_slots(2, 9, &ids), Err(KvError::OutOfKvBlocks { needed: 5, free: 4 }));
        assert_eq!(m.num_requests(), 0);
        assert_eq!(m.num_cached_blocks(), 3, "the refused allocation evicted nothing");
        m.allocate_slots(2, 8, &ids).unwrap();
        assert_eq!(&m.block_table(2)[..3], ids.as_slice());
        ok(&m);
    }

    #[test]
    fn prefix_hit_across_two_requests_with_the_same_prefix() {
        let mut m = KvCacheManager::new(16, 4, true);
        let system = seq(100..110); // 10 tokens: 2 full blocks + 2
        let a: Vec<u32> = system.iter().copied().chain([1, 2, 3, 4, 5]).collect();
        let b: Vec<u32> = system.iter().copied().chain([7, 8, 9]).collect();
        assert_eq!(run_prompt(&mut m, 1, &a, None), 0);
        assert_eq!(run_prompt(&mut m, 2, &b, None), 8, "the two full system blocks are shared");
        assert_eq!(m.block_table(1)[..2], m.block_table(2)[..2]);
        assert_ne!(m.block_table(1)[2], m.block_table(2)[2], "the third block differs in its last tokens");
        for &blk in &m.block_table(2)[..2] {
            assert_eq!(m.pool.ref_cnt(blk), 2);
        }
        let s = m.prefix_cache_stats();
        assert_eq!((s.requests, s.queries, s.hits), (2, 28, 8));
        assert!((s.hit_rate() - 8.0 / 28.0).abs() < 1e-12);
        m.free(1);
        m.free(2);
        ok(&m);
        assert_eq!(m.num_free_blocks(), 16);
    }

    #[test]
    fn prefix_hit_across_the_turns_of_a_chat() {
        let mut m = KvCacheManager::new(32, 4, true);
        let turn1 = seq(0..13);
        run_prompt(&mut m, 1, &turn1, None);
        // Decode a reply token by token, as the scheduler would.
        let mut all = turn1.clone();
        for t in 500..507 {
            all.push(t);
            m.allocate_slots(1, all.len(), &[]).unwrap();
            m.cache_full_blocks(1, &all, all.len(), None);
            ok(&m);
        }
        assert_eq!(all.len(), 20);
        let table1 = m.block_table(1).to_vec();
        m.free(1);
        // Turn 2 = turn 1 prompt + reply + a new message.
        let turn2: Vec<u32> = all.iter().copied().chain(900..906).collect();
        assert_eq!(run_prompt(&mut m, 2, &turn2, None), 20, "the whole history is a hit");
        assert_eq!(m.block_table(2)[..5], table1[..5]);
        // A turn 2 that is exactly the history still recomputes its last block.
        m.free(2);
        assert_eq!(m.get_computed_blocks(&all, None).1, 16);
        ok(&m);
    }

    #[test]
    fn the_salt_separates_caches() {
        let mut m = KvCacheManager::new(16, 4, true);
        let p = seq(0..9);
        run_prompt(&mut m, 1, &p, Some("alice"));
        assert_eq!(m.get_computed_blocks(&p, Some("alice")).1, 8);
        assert_eq!(m.get_computed_blocks(&p, Some("bob")).1, 0);
        assert_eq!(m.get_computed_blocks(&p, None).1, 0);
        assert_eq!(m.get_computed_blocks(&p, Some("")).1, 0);
        run_prompt(&mut m, 2, &p, None);
        assert_eq!(m.get_computed_blocks(&p, None).1, 8);
        assert_ne!(m.block_table(1)[0], m.block_table(2)[0]);
        ok(&m);
    }

    #[test]
    fn memoized_lookups_equal_fresh_ones_as_tokens_grow() {
        let mut m = KvCacheManager::new(32, 4, true);
        let p = seq(0..23);
        run_prompt(&mut m, 1, &p, Some("s"));
        let mut memo = Vec::new();
        for n in [1, 5, 8, 9, 13, 17, 23] {
            let fresh = m.get_computed_blocks(&p[..n], Some("s"));
            assert_eq!(m.get_computed_blocks_memo(&p[..n], Some("s"), &mut memo), fresh, "{n} tokens");
            assert_eq!(memo.len(), (n - 1) / 4, "one hash per full block before the last token");
            // Asked again (a request still waiting): same answer, no new hashes.
            assert_eq!(m.get_computed_blocks_memo(&p[..n], Some("s"), &mut memo), fresh);
            assert_eq!(memo.len(), (n - 1) / 4);
        }
        ok(&m);
    }

    #[test]
    fn the_last_token_is_never_covered() {
        let mut m = KvCacheManager::new(16, 4, true);
        let p = seq(0..12); // exactly 3 blocks
        run_prompt(&mut m, 1, &p, None);
        assert_eq!(m.num_cached_blocks(), 3);
        let (ids, hit) = m.get_computed_blocks(&p, None);
        assert_eq!((ids.len(), hit), (2, 8), "the last full block is dropped");
        assert_eq!(m.get_computed_blocks(&p[..11], None).1, 8);
        assert_eq!(m.get_computed_blocks(&p[..9], None).1, 8);
        assert_eq!(m.get_computed_blocks(&p[..8], None).1, 4);
        assert_eq!(m.get_computed_blocks(&p[..1], None).1, 0);
        assert_eq!(m.get_computed_blocks(&[], None), (vec![], 0));
        let longer: Vec<u32> = p.iter().copied().chain([99]).collect();
        assert_eq!(m.get_computed_blocks(&longer, None).1, 12);
    }

    #[test]
    fn the_partial_block_is_never_cached_and_caching_is_incremental() {
        let mut m = KvCacheManager::new(16, 4, true);
        let p = seq(0..10);
        m.allocate_slots(1, 10, &[]).unwrap();
        m.cache_full_blocks(1, &p, 6, None); // chunked prefill: 6 of 10 computed
        assert_eq!((m.num_cached_blocks(), m.req_to_blocks[&1].num_cached_blocks), (1, 1));
        m.cache_full_blocks(1, &p, 6, None); // nothing new
        assert_eq!(m.num_cached_blocks(), 1);
        m.cache_full_blocks(1, &p, 10, None);
        assert_eq!(m.num_cached_blocks(), 2, "block 2 holds 2 of 4 tokens");
        m.cache_full_blocks(1, &p[..5], 100, None); // counts past the tokens are clamped
        m.cache_full_blocks(7, &p, 10, None); // unknown request
        assert_eq!(m.num_cached_blocks(), 2);
        let longer = seq(0..12);
        m.cache_full_blocks(1, &longer, 12, None);
        assert_eq!(m.num_cached_blocks(), 3);
        // Incremental hashing continues the same chain a fresh lookup computes.
        assert_eq!(m.get_computed_blocks(&seq(0..13), None).0, m.block_table(1));
        ok(&m);
    }

    #[test]
    fn eviction_is_lru_and_takes_the_tail_of_a_freed_request_first() {
        let mut m = KvCacheManager::new(6, 2, true);
        let a = seq(0..6); // 3 full blocks
        let b = seq(100..106);
        run_prompt(&mut m, 1, &a, None);
        run_prompt(&mut m, 2, &b, None);
        let (ta, tb) = (m.block_table(1).to_vec(), m.block_table(2).to_vec());
        m.free(1);
        m.free(2);
        // LRU order: a's blocks (freed first), tail first, then b's.
        let expect: Vec<u32> = ta.iter().rev().chain(tb.iter().rev()).copied().collect();
        assert_eq!(m.pool.free_queue().collect::<Vec<_>>(), expect);
        m.allocate_slots(3, 2, &[]).unwrap(); // evicts a's last block
        assert_eq!(m.block_table(3), &[ta[2]]);
        assert_eq!(m.get_computed_blocks(&seq(0..7), None).1, 4, "a's first two blocks still hit");
        assert_eq!(m.get_computed_blocks(&seq(100..107), None).1, 6, "b untouched");
        ok(&m);
    }

    #[test]
    fn a_cached_block_taken_by_a_new_request_is_not_evicted() {
        let mut m = KvCacheManager::new(4, 2, true);
        let a = seq(0..4);
        run_prompt(&mut m, 1, &a, None);
        m.free(1); // both blocks free and cached; a[0..2]'s block is the tail
        let p: Vec<u32> = a[..2].iter().copied().chain([50]).collect();
        let (ids, hit) = m.get_computed_blocks(&p, None);
        assert_eq!(hit, 2);
        m.allocate_slots(2, 3, &ids).unwrap(); // touch removes it from the free queue
        assert!(!m.pool.is_free(ids[0]));
        // Exhaust the pool with another request: the touched block must survive.
        m.allocate_slots(3, 4, &[]).unwrap();
        assert_eq!(m.num_free_blocks(), 0);
        assert!(!m.block_table(3).contains(&ids[0]));
        assert_eq!(m.get_computed_blocks(&p, None).0, ids);
        ok(&m);
    }

    #[test]
    fn a_freed_request_leaves_shared_blocks_alive_for_the_other() {
        let mut m = KvCacheManager::new(8, 2, true);
        let p = seq(0..5);
        run_prompt(&mut m, 1, &p, None);
        run_prompt(&mut m, 2, &p, None);
        let shared = m.block_table(2)[..2].to_vec();
        m.free(1);
        for &b in &shared {
            assert_eq!(m.pool.ref_cnt(b), 1);
            assert!(!m.pool.is_free(b), "still held by request 2");
        }
        // Even under full pressure, the shared blocks are never handed out.
        let free = m.num_free_blocks();
        m.allocate_slots(3, free * 2, &[]).unwrap();
        assert!(shared.iter().all(|b| !m.block_table(3).contains(b)));
        assert_eq!(m.get_computed_blocks(&p, None).0, shared);
        ok(&m);
        m.free(2);
        m.free(3);
        assert_eq!(m.num_free_blocks(), 8);
        ok(&m);
    }

    #[test]
    fn ref_counts_return_to_zero_and_every_block_is_free() {
        let mut m = KvCacheManager::new(20, 3, true);
        let base = seq(0..10);
        for req in 0..5u64 {
            let p: Vec<u32> = base.iter().copied().chain([1000 + req as u32; 4]).collect();
            run_prompt(&mut m, req, &p, None);
        }
        for req in [3, 0, 4, 1, 2] {
            m.free(req);
            ok(&m);
        }
        assert_eq!(m.num_free_blocks(), 20);
        assert!((0..20).all(|b| m.pool.ref_cnt(b) == 0));
        assert_eq!(m.num_requests(), 0);
    }

    #[test]
    fn identical_prompts_computed_at_once_are_cached_once() {
        let mut m = KvCacheManager::new(16, 2, true);
        let p = seq(0..7);
        // Both admitted before either computed: no hits for either.
        m.allocate_slots(1, 7, &[]).unwrap();
        m.allocate_slots(2, 7, &[]).unwrap();
        m.cache_full_blocks(1, &p, 7, None);
        m.cache_full_blocks(2, &p, 7, None);
        ok(&m);
        assert_eq!(m.num_cached_blocks(), 3, "request 2's copies stay private");
        let hits = m.get_computed_blocks(&p, None).0;
        assert_eq!(hits, m.block_table(1)[..3]);
        // Request 1 goes away; request 2 keeps growing: its next full block chains onto the
        // blocks request 1 cached, so the longer prompt still hits all the way.
        m.free(1);
        let longer: Vec<u32> = p.iter().copied().chain([70, 71]).collect();
        m.allocate_slots(2, 9, &[]).unwrap();
        m.cache_full_blocks(2, &longer, 9, None);
        let (ids, hit) = m.get_computed_blocks(&longer, None);
        assert_eq!(hit, 8);
        assert_eq!(ids[..3], hits[..]);
        assert_eq!(ids[3], m.block_table(2)[3]);
        ok(&m);
    }

    #[test]
    fn stale_or_misplaced_computed_blocks_are_refused() {
        let mut m = KvCacheManager::new(3, 2, true);
        let p = seq(0..5);
        run_prompt(&mut m, 1, &p, None);
        m.free(1);
        let (ids, _) = m.get_computed_blocks(&p, None);
        assert_eq!(ids.len(), 2);
        // Someone else allocates in between and evicts the hits (tail first).
        m.allocate_slots(2, 4, &[]).unwrap(); // the partial block, then ids[1]
        assert_eq!(m.allocate_slots(3, 5, &ids), Err(KvError::StaleComputedBlock { block: ids[1], index: 1 }));
        assert_eq!(m.num_requests(), 1);
        m.free(2);
        let (ids, _) = m.get_computed_blocks(&p, None);
        assert_eq!(ids.len(), 1, "the first block survived");
        m.allocate_slots(3, 5, &ids).unwrap();
        m.cache_full_blocks(3, &p, 5, None);
        assert_eq!(m.allocate_slots(3, 7, &ids), Err(KvError::ComputedBlocksForRunningRequest { req: 3 }));
        assert!(matches!(m.allocate_slots(4, 5, &[99]), Err(KvError::InvalidBlock { block: 99, .. })));
        // A second block on its own is not a chain from the start of a prompt.
        let second = m.block_table(3)[1];
        assert_eq!(m.allocate_slots(4, 5, &[second]), Err(KvError::StaleComputedBlock { block: second, index: 0 }));
        assert_eq!(m.num_requests(), 1);
        ok(&m);
    }

    #[test]
    fn reset_prefix_cache_forgets_everything_once_nothing_is_held() {
        let mut m = KvCacheManager::new(8, 2, true);
        let p = seq(0..5);
        run_prompt(&mut m, 1, &p, None);
        assert!(!m.reset_prefix_cache(), "refused while request 1 holds blocks");
        assert_eq!(m.num_cached_blocks(), 2);
        m.free(1);
        assert!(m.reset_prefix_cache());
        assert_eq!(m.num_cached_blocks(), 0);
        assert_eq!(m.get_computed_blocks(&p, None).1, 0);
        assert_eq!(m.num_free_blocks(), 8);
        ok(&m);
        run_prompt(&mut m, 2, &p, None);
        assert_eq!(m.get_computed_blocks(&p, None).1, 4, "caching works again after a reset");
    }

    #[test]
    fn without_prefix_caching_nothing_is_shared() {
        let mut m = KvCacheManager::new(8, 2, false);
        let p = seq(0..5);
        run_prompt(&mut m, 1, &p, None);
        assert_eq!(m.num_cached_blocks(), 0);
        assert_eq!(run_prompt(&mut m, 2, &p, None), 0);
        assert_eq!(m.prefix_cache_stats(), PrefixCacheStats::default());
        ok(&m);
    }

    // --- property test ----------------------------------------------------------------------

    /// A simulated request: all its tokens so far and how many have K/V in the cache.
    struct Sim {
        tokens: Vec<u32>,
        num_computed: usize,
        salt: Option<&'static str>,
    }

    /// What each block's K/V holds in the simulation: the group whose layers wrote it, the salt
    /// and every token up to the end of the block (K/V of a position depends on the whole
    /// prefix). `None`: garbage or partial.
    type Content = Option<(usize, Option<&'static str>, Vec<u32>)>;

    fn random_prompt(rng: &mut Rng, prefixes: &[Vec<u32>], history: &[Vec<u32>]) -> Vec<u32> {
        let mut p = if !history.is_empty() && rng.chance(0.3) {
            history[rng.below(history.len())].clone() // next turn of an earlier conversation
        } else {
            let pre = &prefixes[rng.below(prefixes.len())];
            pre[..rng.range(0, pre.len())].to_vec()
        };
        for _ in 0..rng.range(if p.is_empty() { 1 } else { 0 }, 12) {
            p.push(rng.below(8) as u32); // a small alphabet makes accidental matches likely
        }
        p
    }

    /// What a scenario exercised, so the test can check that the generator reaches every path.
    #[derive(Default)]
    struct Coverage {
        hit_tokens: u64,
        preemptions: u64,
        refused_admissions: u64,
        resets: u64,
        /// Blocks sliding groups gave back behind their window.
        window_freed: u64,
        /// Sliding-group hits that left entries behind the window untaken.
        window_hits: u64,
    }

    /// KV cache groups of a scenario: one full group (the plain layout) a third of the time,
    /// else full and sliding groups with small windows.
    fn random_groups(rng: &mut Rng) -> Vec<KvKind> {
        let choice = rng.below(6);
        let mut w = || KvKind::Sliding(rng.range(1, 12));
        match choice {
            0 | 1 => vec![KvKind::Full],
            2 => vec![KvKind::Full, w()],
            3 => vec![w()],
            4 => vec![KvKind::Full, w(), w()],
            _ => vec![w(), KvKind::Full, w()],
        }
    }

    /// One random scenario; invariants after every operation, every block free at the end.
    fn simulate(seed: u64, cov: &mut Coverage) {
        let mut rng = Rng::new(seed);
        let bs = [1, 2, 3, 4, 16][rng.below(5)];
        let n_blocks = rng.range(2, 40);
        let prefix_caching = !rng.chance(0.1);
        let groups = random_groups(&mut rng);
        let n_groups = groups.len();
        let mut m = KvCacheManager::with_groups(n_blocks, bs, prefix_caching, &groups);
        let prefixes: Vec<Vec<u32>> = (0..3).map(|_| (0..rng.range(1, 40)).map(|_| rng.below(8) as u32).collect()).collect();
        const SALTS: [Option<&str>; 3] = [None, None, Some("tenant")];
        let mut content: Vec<Content> = vec![None; n_blocks];
        let mut running: HashMap<RequestId, Sim> = HashMap::new();
        let mut waiting: Vec<(RequestId, Sim)> = Vec::new();
        let mut history: Vec<Vec<u32>> = Vec::new();
        let mut next_id: RequestId = 0;

        for _ in 0..rng.range(20, 120) {
            let op = rng.below(10);
            if op < 2 {
                // Arrival.
                let tokens = random_prompt(&mut rng, &prefixes, &history);
                waiting.push((next_id, Sim { tokens, num_computed: 0, salt: SALTS[rng.below(3)] }));
                next_id += 1;
            } else if op < 4 && !waiting.is_empty() {
                // Admission (or resumption after preemption): look up, take the hits, allocate
                // the first chunk.
                let i = rng.below(waiting.len());
                let (req, mut sim) = waiting.swap_remove(i);
                let (ids, hit) = m.get_computed_blocks(&sim.tokens, sim.salt);
                assert_eq!(hit * n_groups, ids.len() * bs);
                assert!(hit < sim.tokens.len(), "the last token is never covered");
                let k = hit / bs;
                for (g, group_ids) in ids.chunks(k.max(1)).enumerate() {
                    // Entries behind the window of the first token to compute may be left
                    // untaken; the last hit block never is, and the window's blocks are there.
                    let lo = groups[g].window().map_or(0, |w| (hit + 1).saturating_sub(w) / bs).min(k - 1);
                    cov.window_hits += group_ids.contains(&NULL_BLOCK) as u64;
                    for (j, &b) in group_ids.iter().enumerate() {
                        if b == NULL_BLOCK {
                            assert!(j < lo, "seed {seed}: group {g} hit entry {j} of {k} given back (window from {lo})");
                            continue;
                        }
                        let want = (g, sim.salt, sim.tokens[..(j + 1) * bs].to_vec());
                        assert_eq!(content[b as usize].as_ref(), Some(&want), "seed {seed}: block {b} shared with the wrong contents");
                    }
                }
                let chunk = rng.range(1, sim.tokens.len() - hit);
                let free = m.num_free_blocks();
                match m.allocate_slots(req, hit + chunk, &ids) {
                    Ok(()) => {
                        sim.num_computed = hit;
                        cov.window_freed += compute(&mut m, &mut content, req, &mut sim, chunk, seed) as u64;
                        running.insert(req, sim);
                    }
                    Err(KvError::OutOfKvBlocks { .. }) => {
                        cov.refused_admissions += 1;
                        assert_eq!((m.block_tables(req).len(), m.num_free_blocks()), (0, free));
                        waiting.push((req, sim));
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            } else if op < 8 && !running.is_empty() {
                // A step of a running request: a prefill chunk, or a decode token.
                let req = *running.keys().nth(rng.below(running.len())).expect("non-empty");
                let sim = running.get_mut(&req).expect("picked from running");
                if sim.num_computed == sim.tokens.len() {
                    sim.tokens.push(rng.below(8) as u32); // the token sampled last step
                }
                let n = rng.range(1, sim.tokens.len() - sim.num_computed);
                let (before, free) = (m.block_tables(req).to_vec(), m.num_free_blocks());
                match m.allocate_slots(req, sim.num_computed + n, &[]) {
                    Ok(()) => cov.window_freed += compute(&mut m, &mut content, req, sim, n, seed) as u64,
                    Err(KvError::OutOfKvBlocks { .. }) => {
                        assert_eq!((m.block_tables(req), m.num_free_blocks()), (&before[..], free));
                        // Preempt the newest running request (recompute later).
                        let victim = *running.keys().max().expect("non-empty");
                        let mut sim = running.remove(&victim).expect("present");
                        m.free(victim);
                        cov.preemptions += 1;
                        sim.num_computed = 0;
                        waiting.push((victim, sim));
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            } else if op < 9 && !running.is_empty() {
                // Finish or cancel.
                let req = *running.keys().nth(rng.below(running.len())).expect("non-empty");
                let sim = running.remove(&req).expect("present");
                m.free(req);
                history.push(sim.tokens);
            } else if rng.chance(0.2) {
                let idle = running.is_empty();
                assert_eq!(m.reset_prefix_cache(), idle, "seed {seed}");
                cov.resets += idle as u64;
            }
            if let Err(e) = m.check_invariants() {
                panic!("seed {seed}: {e}");
            }
            let held: usize = running.keys().map(|&r| m.num_held_blocks(r)).sum();
            assert!(m.num_free_blocks() + held >= m.num_usable_blocks(), "seed {seed}: a block is neither free nor held");
        }
        for req in running.keys().copied().collect::<Vec<_>>() {
            m.free(req);
        }
        if let Err(e) = m.check_invariants() {
            panic!("seed {seed}: {e}");
        }
        assert_eq!(m.num_free_blocks(), m.num_usable_blocks(), "seed {seed}: leaked blocks");
        assert!((0..n_blocks as u32).all(|b| m.pool.ref_cnt(b) == 0));
        let s = m.prefix_cache_stats();
        assert!(s.hits <= s.queries);
        cov.hit_tokens += s.hits;
    }

    /// The forward pass of the simulation, group by group: every key the chunk's queries read
    /// (each query its own window) is in a held block with the right contents; K/V of the next
    /// `n` tokens is written only into blocks the request holds alone. Then, as the scheduler
    /// does, cache its full blocks and give back what fell behind the windows (checked: nothing
    /// older than the next query's window stays held). Returns the blocks given back.
    fn compute(m: &mut KvCacheManager, content: &mut [Content], req: RequestId, sim: &mut Sim, n: usize, seed: u64) -> usize {
        let bs = m.block_size();
        let tables = m.block_tables(req).to_vec();
        let (start, end) = (sim.num_computed, sim.num_computed + n);
        for (g, table) in tables.iter().enumerate() {
            let kind = m.groups()[g];
            let first_key = kind.window().map_or(0, |w| (start + 1).saturating_sub(w));
            for (blk, &b) in table.iter().enumerate().take(end.div_ceil(bs)).skip(first_key / bs) {
                assert_ne!(b, NULL_BLOCK, "seed {seed}: group {g} ({kind}) reads block {blk} for positions {start}..{end}, given back");
                if blk < start / bs {
                    let want = (g, sim.salt, sim.tokens[..(blk + 1) * bs].to_vec());
                    assert_eq!(content[b as usize].as_ref(), Some(&want), "seed {seed}: group {g} reads block {b} with wrong contents");
                }
            }
            for pos in start..end {
                let b = table[pos / bs];
                assert_eq!(m.pool.ref_cnt(b), 1, "seed {seed}: K/V written into shared block {b}");
                assert!(m.pool.block_hash(b).is_none(), "seed {seed}: K/V written into cached block {b}");
                content[b as usize] = if (pos + 1) % bs == 0 { Some((g, sim.salt, sim.tokens[..pos + 1].to_vec())) } else { None };
            }
        }
        sim.num_computed = end;
        m.cache_full_blocks(req, &sim.tokens, end, sim.salt);
        let freed = m.remove_skipped_blocks(req, end);
        for (g, table) in m.block_tables(req).iter().enumerate() {
            if let Some(w) = m.groups()[g].window() {
                let behind = (end + 1).saturating_sub(w) / bs;
                assert!(table[..behind].iter().all(|&b| b == NULL_BLOCK), "seed {seed}: group {g} keeps blocks behind its window");
            }
        }
        freed
    }

    #[test]
    fn random_request_streams_keep_every_invariant() {
        let mut cov = Coverage::default();
        for seed in 0..3000 {
            simulate(seed, &mut cov);
        }
        assert!(cov.hit_tokens > 0 && cov.preemptions > 0 && cov.refused_admissions > 0 && cov.resets > 0);
        assert!(
            cov.window_freed > 0 && cov.window_hits > 0,
            "sliding groups gave back {} blocks, {} hits",
            cov.window_freed,
            cov.window_hits
        );
    }

    /// The same with a 3-bit block hash: nearly every lookup meets a colliding block, so any hit
    /// that were not verified exactly would show as a block shared with the wrong contents.
    #[test]
    fn random_request_streams_with_colliding_hashes_never_share_wrongly() {
        crate::block_pool::test_rng::HASH_MASK.with(|c| c.set(0b111));
        let mut cov = Coverage::default();
        for seed in 0..1500 {
            simulate(seed, &mut cov);
        }
        assert!(cov.hit_tokens > 0);
    }
}
