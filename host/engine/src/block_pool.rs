//! The KV block pool: fixed-size blocks of token slots with reference counts, an LRU free queue,
//! and the hash map of cached full blocks that makes prefix sharing possible. The policy on top
//! (which request owns which blocks, when blocks become cached) lives in `kv_manager.rs`.
//!
//! Modelled on vLLM v1's `BlockPool` and `FreeKVCacheBlockQueue` (`vllm/v1/core/block_pool.py`,
//! `kv_cache_utils.py`); our own code, with two differences: a cache hit is verified exactly
//! (tokens, salt and parent block are compared, so a hash collision costs a miss, never a wrong
//! share), and the free queue is intrusive arrays of block ids instead of linked objects.
//!
//! The free queue, O(1) at both ends and in the middle (no allocation per operation):
//!
//! ```text
//!   head (evicted first)                                              tail (evicted last)
//!    [ 9 ] <-> [ 4 ] <-> [ 5 ] <-> [ 12 ] <-> [ 3 ] <-> ...  <-> [ 7 ]
//!    popleft(): a new block        remove(12): a new request     append(b): a block whose
//!    (loses its hash if it had     reuses cached block 12        ref_cnt fell to 0
//!     one: eviction)               ("touch")
//! ```
//!
//! A block's life:
//!
//! ```text
//!                     get_new_blocks                    cache_full_block
//!   free  ---------------------------------> owned ------------------------> owned + cached
//!   (ref 0, queued)                          (ref >= 1)                      (ref >= 1, in map)
//!     ^                                       |  ^                             |         ^
//!     +------------- free_blocks -------------+  |                 free_blocks |         | touch
//!                                                |                             v         | (prefix hit)
//!                                                +---- get_new_blocks ----- free + cached
//!                                                      (eviction: the       (ref 0, queued, in map)
//!                                                       hash is dropped)
//! ```
//!
//! KV cache groups (sliding-window layers apart from full ones, `kv_manager.rs`): the same token
//! prefix has one block per group, so cached blocks are keyed by (group, hash); a block is cached
//! for one group at a time.
//!
//! Invariants (checked by [`BlockPool::check_invariants`]):
//! - every usable block is either in the free queue with `ref_cnt == 0`, or out of it with
//!   `ref_cnt > 0`, never both; reserved blocks are neither (none today: a given-back table
//!   entry is `NULL_BLOCK`, not a block of the pool);
//! - the queue's `prev`/`next` links are mutually consistent and its length is counted right;
//! - a block carries a (group, hash) exactly when the map sends it to that block (a bijection);
//! - only full blocks are cached, and a cached block's K/V is never written again: the writer
//!   (the request that filled it) has moved past it, and every later owner only reads it.
//!
//! Blocks freed together are appended tail first by the caller (`KvCacheManager::free`), so LRU
//! eviction throws away the ends of prefixes before their beginnings; a block that loses its
//! parent can no longer be reached by a lookup anyway.

use std::collections::HashMap;

use rocmforge_runtime::NULL_BLOCK;

/// Blocks at the start of the pool that are never handed out. 0: the null entry of a block
/// table (a block given back behind a sliding window) is `NULL_BLOCK`, outside the pool, rather
/// than a reserved block (the randomized tests pass either way; the small tests that name exact
/// block ids assume 0).
const NUM_RESERVED_BLOCKS: usize = 0;

/// The "no block" link in the free queue.
const NIL: u32 = u32::MAX;

/// Errors of the KV block pool and the KV cache manager.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("out of KV cache blocks: need {needed}, {free} free")]
    OutOfKvBlocks { needed: usize, free: usize },
    #[error("block {block} released more often than it was taken")]
    DoubleFree { block: u32 },
    #[error("block id {block} is not a usable block of this pool ({n_blocks} blocks, {reserved} reserved)")]
    InvalidBlock { block: u32, n_blocks: usize, reserved: usize },
    #[error("computed block {block} (index {index}) is no longer cached: call get_computed_blocks again right before allocate_slots")]
    StaleComputedBlock { block: u32, index: usize },
    #[error("request {req} already holds blocks: computed blocks are only taken on a request's first allocation")]
    ComputedBlocksForRunningRequest { req: u64 },
    #[error("{len} computed blocks do not split into {n_groups} KV cache groups of equal length")]
    MalformedComputedBlocks { len: usize, n_groups: usize },
}

// ---------------------------------------------------------------------------------------------
// Block hashes

/// The identity of a full block for the prefix cache: a 64-bit hash chained over the full blocks
/// before it, `hash(parent hash, the block's token ids, extra key)`, where the extra key is the
/// cache salt and only enters the first block (the chain carries it to the rest).
///
/// The hash never leaves the process, and a hit is always verified against the block's stored
/// tokens, salt and parent, so 64 bits are plenty: a collision only costs a cache miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

// Odd 64-bit constants with well-mixed bits (the primes xxHash64 uses); the mixing below follows
// the xxHash64 round / avalanche idea, written here.
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const SEED: u64 = 0x524F_434D_464F_5247; // "ROCMFORG"

struct Mix(u64);

impl Mix {
    #[inline]
    fn word(&mut self, x: u64) {
        let r = x.wrapping_mul(P2).rotate_left(31).wrapping_mul(P1);
        self.0 = (self.0 ^ r).rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }

    #[inline]
    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

impl BlockHash {
    /// Hash of one full block. `parent` is `None` for the first block of a sequence; `extra` is
    /// the extra key (cache salt bytes), given for the first block only. Every field is tagged
    /// or length-prefixed so that (no parent, no salt), (no salt) and (empty salt) all differ.
    pub fn of(parent: Option<BlockHash>, tokens: &[u32], extra: Option<&[u8]>) -> BlockHash {
        let mut m = Mix(SEED);
        match parent {
            None => m.word(0),
            Some(p) => {
                m.word(1);
                m.word(p.0);
            }
        }
        m.word(tokens.len() as u64);
        let mut pairs = tokens.chunks_exact(2);
        for p in &mut pairs {
            m.word(p[0] as u64 | (p[1] as u64) << 32);
        }
        if let [last] = pairs.remainder() {
            m.word(*last as u64);
        }
        match extra {
            None => m.word(0),
            Some(bytes) => {
                m.word(1);
                m.word(bytes.len() as u64);
                let mut words = bytes.chunks_exact(8);
                for w in &mut words {
                    m.word(u64::from_le_bytes(w.try_into().expect("chunks_exact(8) gives 8 bytes")));
                }
                let mut tail = [0u8; 8];
                tail[..words.remainder().len()].copy_from_slice(words.remainder());
                m.word(u64::from_le_bytes(tail));
            }
        }
        let h = m.finish();
        #[cfg(test)]
        let h = h & test_rng::HASH_MASK.with(|c| c.get());
        BlockHash(h)
    }
}

/// A cached block as it was when it was looked up: its id plus the generation its cached
/// contents were given. A block re-cached later (after eviction) gets a new generation, so a
/// stale `BlockRef` never matches it again. Only the pool makes these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    id: u32,
    generation: u64,
}

impl BlockRef {
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// What a cached block's K/V depends on before its own tokens.
#[derive(Debug)]
enum Parent {
    /// First block of a sequence; the salt separates caches (tenants, LoRA adapters, ...).
    Root { salt: Option<Box<str>> },
    /// The cached block before it, exactly (id + generation).
    Block(BlockRef),
}

#[derive(Debug)]
struct Cached {
    /// The KV cache group whose K/V the block holds.
    group: u32,
    hash: BlockHash,
    generation: u64,
    parent: Parent,
}

// ---------------------------------------------------------------------------------------------
// Free queue

/// A doubly-linked queue of block ids threaded through `prev`/`next` arrays indexed by block id
/// (vLLM's `FreeKVCacheBlockQueue`). `popleft`, `append` and `remove` are O(1) and never allocate.
#[derive(Debug)]
pub struct FreeKvCacheBlockQueue {
    prev: Vec<u32>,
    next: Vec<u32>,
    queued: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeKvCacheBlockQueue {
    /// An empty queue able to hold the ids `0..n_blocks`.
    pub fn new(n_blocks: usize) -> Self {
        assert!(n_blocks < NIL as usize, "at most {} blocks", NIL - 1);
        FreeKvCacheBlockQueue {
            prev: vec![NIL; n_blocks],
            next: vec![NIL; n_blocks],
            queued: vec![false; n_blocks],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, b: u32) -> bool {
        self.queued.get(b as usize).copied().unwrap_or(false)
    }

    /// Take the least recently appended block.
    pub fn popleft(&mut self) -> Option<u32> {
        if self.head == NIL {
            return None;
        }
        let b = self.head;
        self.remove(b);
        Some(b)
    }

    /// Put `b` at the tail. Panics if `b` is already queued (a bookkeeping bug in the caller).
    pub fn append(&mut self, b: u32) {
        let i = b as usize;
        assert!(!self.queued[i], "block {b} appended to the free queue twice");
        self.queued[i] = true;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.len += 1;
    }

    /// Unlink `b` from wherever it is. Panics if `b` is not queued.
    pub fn remove(&mut self, b: u32) {
        let i = b as usize;
        assert!(self.queued[i], "block {b} removed from the free queue but not in it");
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.queued[i] = false;
        self.len -= 1;
    }

    /// Ids from head (next to be evicted) to tail.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let b = cur;
            cur = self.next[b as usize];
            Some(b)
        })
    }

    /// Links consistent, no cycle, `len` and the `queued` flags agree with the list.
    pub fn check(&self) -> Result<(), String> {
        let mut prev = NIL;
        let mut cur = self.head;
        let mut n = 0usize;
        while cur != NIL {
            let i = cur as usize;
            if i >= self.queued.len() {
                return Err(format!("free queue links to block {cur}, out of range"));
            }
            if !self.queued[i] {
                return Err(format!("block {cur} is linked in the free queue but not flagged as queued"));
            }
            if self.prev[i] != prev {
                return Err(format!("block {cur}: prev link {} but reached from {prev}", self.prev[i]));
            }
            n += 1;
            if n > self.len {
                return Err(format!("free queue is longer than its length {} (a cycle?)", self.len));
            }
            prev = cur;
            cur = self.next[i];
        }
        if prev != self.tail {
            return Err(format!("free queue ends at {prev} but tail is {}", self.tail));
        }
        if n != self.len {
            return Err(format!("free queue has {n} blocks, length says {}", self.len));
        }
        let flagged = self.queued.iter().filter(|&&q| q).count();
        if flagged != n {
            return Err(format!("{flagged} blocks flagged as queued, {n} linked"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Block pool

/// Blocks, their reference counts and hashes, the free queue and the prefix-cache map.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    n_reserved: usize,
    ref_cnt: Vec<u32>,
    free_queue: FreeKvCacheBlockQueue,
    cached: Vec<Option<Cached>>,
    /// Token ids of every cached block, `block_size` per block, for exact hit verification.
    /// Allocated on the first `cache_full_block`, so a pool without prefix caching pays nothing.
    tokens: Vec<u32>,
    /// Full cached blocks by hash. Std `HashMap` (random-keyed SipHash) on purpose: the keys come
    /// from user tokens through a fixed-key hash, so an attacker could aim at one bucket of an
    /// unkeyed map; keyed, they can at worst collide our 64 bits, which only costs misses.
    cached_block_hash_to_block: HashMap<(u32, BlockHash), u32>,
    next_generation: u64,
}

impl BlockPool {
    /// `n_blocks` blocks of `block_size` token slots; block ids are `0..n_blocks`, the first
    /// `NUM_RESERVED_BLOCKS` of them never handed out. The free queue starts in id order.
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        #[allow(clippy::unnecessary_min_or_max)] // the constant is 0 today
        let n_reserved = NUM_RESERVED_BLOCKS.min(n_blocks);
        let mut free_queue = FreeKvCacheBlockQueue::new(n_blocks);
        for b in n_reserved..n_blocks {
            free_queue.append(b as u32);
        }
        BlockPool {
            block_size,
            n_reserved,
            ref_cnt: vec![0; n_blocks],
            free_queue,
            cached: (0..n_blocks).map(|_| None).collect(),
            tokens: Vec::new(),
            cached_block_hash_to_block: HashMap::new(),
            next_generation: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// All blocks, reserved ones included (the KV memory the runtime allocates).
    pub fn n_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    /// Blocks that can ever be handed out.
    pub fn num_usable_blocks(&self) -> usize {
        self.n_blocks() - self.n_reserved
    }

    /// Blocks in the free queue; cached blocks nobody references count as free.
    pub fn num_free_blocks(&self) -> usize {
        self.free_queue.len()
    }

    /// Old name of [`Self::num_free_blocks`].
    pub fn n_free(&self) -> usize {
        self.num_free_blocks()
    }

    /// Fraction of usable blocks referenced by someone, in `[0, 1]` (1 for an empty pool).
    pub fn usage(&self) -> f32 {
        let total = self.num_usable_blocks();
        if total == 0 {
            return 1.0;
        }
        1.0 - self.num_free_blocks() as f32 / total as f32
    }

    /// Blocks needed to hold `n_tokens` positions.
    pub fn blocks_for(&self, n_tokens: usize) -> usize {
        n_tokens.div_ceil(self.block_size)
    }

    pub fn ref_cnt(&self, b: u32) -> u32 {
        self.ref_cnt.get(b as usize).copied().unwrap_or(0)
    }

    pub fn is_free(&self, b: u32) -> bool {
        self.free_queue.contains(b)
    }

    pub fn block_hash(&self, b: u32) -> Option<BlockHash> {
        self.cached.get(b as usize)?.as_ref().map(|c| c.hash)
    }

    /// The block as currently cached, if it is.
    pub fn cached_ref(&self, b: u32) -> Option<BlockRef> {
        self.cached.get(b as usize)?.as_ref().map(|c| BlockRef { id: b, generation: c.generation })
    }

    pub fn num_cached_blocks(&self) -> usize {
        self.cached_block_hash_to_block.len()
    }

    /// Free blocks from head (evicted next) to tail.
    pub fn free_queue(&self) -> impl Iterator<Item = u32> + '_ {
        self.free_queue.iter()
    }

    fn check_id(&self, b: u32) -> Result<(), KvError> {
        if (b as usize) < self.n_reserved || b as usize >= self.n_blocks() {
            return Err(KvError::InvalidBlock { block: b, n_blocks: self.n_blocks(), reserved: self.n_reserved });
        }
        Ok(())
    }

    // --- allocation -------------------------------------------------------------------------

    /// Pop `n` blocks from the head of the free queue into `out` with `ref_cnt = 1`; a popped
    /// block that was cached loses its hash (eviction). All-or-nothing.
    pub fn get_new_blocks(&mut self, n: usize, out: &mut Vec<u32>) -> Result<(), KvError> {
        if n > self.free_queue.len() {
            return Err(KvError::OutOfKvBlocks { needed: n, free: self.free_queue.len() });
        }
        out.reserve(n);
        for _ in 0..n {
            let b = self.free_queue.popleft().expect("length checked above");
            self.uncache(b);
            debug_assert_eq!(self.ref_cnt[b as usize], 0, "block {b} was free with references");
            self.ref_cnt[b as usize] = 1;
            out.push(b);
        }
        Ok(())
    }

    /// Take one more reference to each block (a prefix-cache hit); a free one leaves the free
    /// queue, so it can no longer be evicted. Ids must be valid (the manager checks them).
    pub fn touch(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.ref_cnt[b as usize] == 0 {
                self.free_queue.remove(b);
            }
            self.ref_cnt[b as usize] += 1;
        }
    }

    /// Drop one reference to each block, in the order given; blocks reaching zero are appended
    /// to the free queue in that order (pass a request's blocks tail first). Keeps hashes: a
    /// free cached block stays a prefix-cache hit until it is evicted. Panics on a block with no
    /// reference: the manager owns its tables, so that is a bookkeeping bug, not an input error.
    pub fn free_blocks(&mut self, ordered: impl IntoIterator<Item = u32>) {
        for b in ordered {
            let rc = &mut self.ref_cnt[b as usize];
            assert!(*rc > 0, "block {b} freed with no reference left (KV bookkeeping bug)");
            *rc -= 1;
            if *rc == 0 {
                self.free_queue.append(b);
            }
        }
    }

    // --- prefix cache -----------------------------------------------------------------------

    fn block_tokens(&self, b: u32) -> &[u32] {
        let s = b as usize * self.block_size;
        &self.tokens[s..s + self.block_size]
    }

    fn parent_matches(c: &Cached, parent: Option<BlockRef>, salt: Option<&str>) -> bool {
        match (&c.parent, parent) {
            (Parent::Root { salt: s }, None) => s.as_deref() == salt,
            (Parent::Block(p), Some(q)) => *p == q,
            _ => false,
        }
    }

    /// The cached block of `group` for `hash` whose contents are exactly `tokens` after `parent`
    /// (or, for a first block, after nothing with salt `salt`). Takes no reference.
    pub fn get_cached_block(
        &self,
        group: u32,
        hash: BlockHash,
        parent: Option<BlockRef>,
        tokens: &[u32],
        salt: Option<&str>,
    ) -> Option<BlockRef> {
        let &b = self.cached_block_hash_to_block.get(&(group, hash))?;
        let c = self.cached[b as usize].as_ref().expect("map points at a cached block");
        if Self::parent_matches(c, parent, salt) && self.block_tokens(b) == tokens {
            Some(BlockRef { id: b, generation: c.generation })
        } else {
            None
        }
    }

    /// Register the full, written, referenced block `b` of `group` as `hash` (contents `tokens`
    /// after `parent`, a block of the same group). Returns the block that now stands for these
    /// contents in the cache, which the
    /// next block of the sequence must name as its parent: `b` itself, or an identical block
    /// that was already cached (then `b` stays uncached: two requests computed the same prefix
    /// at once). A different block under the same hash (a real collision, or the same contents
    /// under a parent that has since been evicted) is uncached in favour of `b`.
    pub fn cache_full_block(
        &mut self,
        group: u32,
        b: u32,
        hash: BlockHash,
        parent: Option<BlockRef>,
        tokens: &[u32],
        salt: Option<&str>,
    ) -> BlockRef {
        assert_eq!(tokens.len(), self.block_size, "only full blocks are cached");
        assert!(self.ref_cnt[b as usize] > 0, "block {b} cached while nobody holds it");
        if let Some(r) = self.get_cached_block(group, hash, parent, tokens, salt) {
            return r;
        }
        if let Some(&other) = self.cached_block_hash_to_block.get(&(group, hash)) {
            self.uncache(other);
        }
        self.uncache(b);
        if self.tokens.is_empty() {
            self.tokens = vec![0; self.n_blocks() * self.block_size];
        }
        let s = b as usize * self.block_size;
        self.tokens[s..s + self.block_size].copy_from_slice(tokens);
        let generation = self.next_generation;
        self.next_generation += 1;
        let parent = match parent {
            None => Parent::Root { salt: salt.map(Box::from) },
            Some(p) => Parent::Block(p),
        };
        self.cached[b as usize] = Some(Cached { group, hash, generation, parent });
        self.cached_block_hash_to_block.insert((group, hash), b);
        BlockRef { id: b, generation }
    }

    /// Forget `b`'s hash, if it has one. Its children keep naming it by generation, so they
    /// can no longer be reached even if `b` is cached again with other contents.
    fn uncache(&mut self, b: u32) {
        if let Some(c) = self.cached[b as usize].take() {
            let removed = self.cached_block_hash_to_block.remove(&(c.group, c.hash));
            debug_assert_eq!(removed, Some(b), "hash map out of step with block {b}");
        }
    }

    /// Check that `blocks` is still a chain of cached blocks of `group` starting at a first
    /// block, as `get_computed_blocks` returned it (each block's parent is the one before it).
    /// Leading `NULL_BLOCK` entries (a sliding group's hit, whose blocks behind the window are
    /// not taken) are skipped: the first block after them is only checked to be a cached block
    /// of the group that is not a first block (its parent is not held, so not checked).
    pub fn verify_chain(&self, group: u32, blocks: &[u32]) -> Result<(), KvError> {
        let n_null = blocks.iter().take_while(|&&b| b == NULL_BLOCK).count();
        let mut parent: Option<BlockRef> = None;
        for (index, &b) in blocks.iter().enumerate().skip(n_null) {
            self.check_id(b)?;
            let c = self.cached[b as usize].as_ref().filter(|c| c.group == group);
            let ok = c.is_some_and(|c| match (&c.parent, parent) {
                (Parent::Root { .. }, None) => index == 0,
                (Parent::Block(_), None) => index > 0,
                (Parent::Block(p), Some(q)) => *p == q,
                _ => false,
            });
            let Some(c) = c.filter(|_| ok) else {
                return Err(KvError::StaleComputedBlock { block: b, index });
            };
            parent = Some(BlockRef { id: b, generation: c.generation });
        }
        Ok(())
    }

    /// Drop every cached hash. Refused (false) while any block is referenced, because a running
    /// request would keep caching children of blocks that no longer exist in the map.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.num_free_blocks() != self.num_usable_blocks() {
            return false;
        }
        self.cached_block_hash_to_block.clear();
        self.cached.iter_mut().for_each(|c| *c = None);
        true
    }

    // --- the old table-based API (host/cli/session.rs) --------------------------------------

    /// Grow `table` so that it covers `n_tokens` positions. All-or-nothing.
    pub fn allocate_slots(&mut self, table: &mut Vec<u32>, n_tokens: usize) -> Result<(), KvError> {
        let need = self.blocks_for(n_tokens).saturating_sub(table.len());
        self.get_new_blocks(need, table)
    }

    /// Take another reference to block `b` (prefix sharing). A free block (cached or not)
    /// leaves the free queue, so it is never handed out to someone else while shared.
    pub fn share(&mut self, b: u32) -> Result<(), KvError> {
        self.check_id(b)?;
        self.touch(&[b]);
        Ok(())
    }

    /// Release every block of `table` (tail blocks enter the free queue first) and clear it.
    /// All-or-nothing: on an invalid id or a block with no reference left, nothing changes and
    /// `table` is left as it was, so no block leaks.
    pub fn release(&mut self, table: &mut Vec<u32>) -> Result<(), KvError> {
        for (i, &b) in table.iter().enumerate() {
            let err = match self.check_id(b) {
                Err(e) => Some(e),
                Ok(()) if self.ref_cnt[b as usize] == 0 => Some(KvError::DoubleFree { block: b }),
                Ok(()) => None,
            };
            if let Some(e) = err {
                for &p in &table[..i] {
                    self.ref_cnt[p as usize] += 1;
                }
                return Err(e);
            }
            self.ref_cnt[b as usize] -= 1;
        }
        // A block listed twice reaches zero once and is appended once.
        for &b in table.iter().rev() {
            if self.ref_cnt[b as usize] == 0 && !self.free_queue.contains(b) {
                self.free_queue.append(b);
            }
        }
        table.clear();
        Ok(())
    }

    // --- checks -----------------------------------------------------------------------------

    /// The invariants of the module header; the first violation found, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.free_queue.check()?;
        for b in 0..self.n_blocks() {
            let (rc, queued) = (self.ref_cnt[b], self.free_queue.queued[b]);
            if b < self.n_reserved {
                if rc != 0 || queued || self.cached[b].is_some() {
                    return Err(format!("reserved block {b} is in use (ref {rc}, queued {queued})"));
                }
            } else if queued != (rc == 0) {
                return Err(format!("block {b}: ref_cnt {rc} but in free queue = {queued}"));
            }
            if let Some(c) = &self.cached[b] {
                if self.cached_block_hash_to_block.get(&(c.group, c.hash)) != Some(&(b as u32)) {
                    return Err(format!("block {b} carries hash {:?} but the map does not point at it", c.hash));
                }
            }
        }
        for (&(g, h), &b) in &self.cached_block_hash_to_block {
            match self.cached.get(b as usize) {
                Some(Some(c)) if c.hash == h && c.group == g => {}
                _ => return Err(format!("map entry {h:?} -> block {b}, which does not carry that hash")),
            }
        }
        Ok(())
    }
}

/// A small seeded generator for the randomized tests (splitmix64): deterministic, no dependency.
#[cfg(test)]
pub(crate) mod test_rng {
    thread_local! {
        /// Bits of `BlockHash::of` kept in this test thread: a few bits make collisions
        /// constant, to exercise the exact verification of hits.
        pub static HASH_MASK: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
    }

    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed ^ 0x5EED_5EED_B10C_5EED)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n` (n > 0).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        /// Uniform in `lo..=hi`.
        pub fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + self.below(hi - lo + 1)
        }

        /// True with probability `p`.
        pub fn chance(&mut self, p: f64) -> bool {
            ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_rng::Rng;
    use super::*;

    fn ok(pool: &BlockPool) {
        if let Err(e) = pool.check_invariants() {
            panic!("invariant violated: {e}");
        }
    }

    #[test]
    fn free_queue_popleft_append_and_remove_anywhere() {
        let mut q = FreeKvCacheBlockQueue::new(6);
        for b in [3, 1, 4, 0, 5] {
            q.append(b);
        }
        q.check().unwrap();
        q.remove(4); // middle
        q.remove(3); // head
        q.remove(5); // tail
        q.check().unwrap();
        assert_eq!(q.iter().collect::<Vec<_>>(), [1, 0]);
        q.append(3);
        assert_eq!(q.popleft(), Some(1));
        assert_eq!(q.popleft(), Some(0));
        assert_eq!(q.popleft(), Some(3));
        assert_eq!(q.popleft(), None);
        assert!(q.is_empty());
        q.check().unwrap();
        q.append(2);
        assert_eq!(q.iter().collect::<Vec<_>>(), [2]);
        q.check().unwrap();
    }

    #[test]
    fn free_queue_matches_a_vecdeque_model_under_random_operations() {
        let mut rng = Rng::new(7);
        let n = 40;
        let mut q = FreeKvCacheBlockQueue::new(n);
        let mut model = std::collections::VecDeque::new();
        for _ in 0..20_000 {
            match rng.below(3) {
                0 => assert_eq!(q.popleft(), model.pop_front()),
                1 => {
                    let b = rng.below(n) as u32;
                    if !model.contains(&b) {
                        q.append(b);
                        model.push_back(b);
                    }
                }
                _ => {
                    if !model.is_empty() {
                        let i = rng.below(model.len());
                        let b = model.remove(i).unwrap();
                        q.remove(b);
                    }
                }
            }
            assert_eq!(q.len(), model.len());
        }
        q.check().unwrap();
        assert!(q.iter().eq(model.iter().copied()));
    }

    #[test]
    fn block_hash_depends_on_every_input() {
        let t = [1u32, 2, 3, 4];
        let h = BlockHash::of(None, &t, None);
        assert_eq!(h, BlockHash::of(None, &t, None), "deterministic");
        assert_ne!(h, BlockHash::of(None, &[1, 2, 4, 3], None), "token order");
        assert_ne!(h, BlockHash::of(Some(BlockHash(0)), &t, None), "no parent vs parent 0");
        assert_ne!(h, BlockHash::of(None, &t, Some(b"")), "no salt vs empty salt");
        assert_ne!(BlockHash::of(None, &t, Some(b"a")), BlockHash::of(None, &t, Some(b"b")));
        assert_ne!(BlockHash::of(None, &t, Some(b"a")), BlockHash::of(None, &t, Some(b"a\0")));
        assert_ne!(BlockHash::of(Some(h), &t, None), BlockHash::of(Some(BlockHash(h.0 ^ 1)), &t, None));
        assert_ne!(BlockHash::of(None, &[0], None), BlockHash::of(None, &[0, 0], None), "length");
        // No collision among many random blocks (a weak mixer collides on structured inputs).
        let mut rng = Rng::new(1);
        let mut seen = std::collections::HashSet::new();
        for i in 0..50_000u32 {
            let toks = [i, rng.below(4) as u32, i >> 3, 7];
            assert!(seen.insert(BlockHash::of(None, &toks, None)));
        }
    }

    #[test]
    fn allocate_grows_on_block_boundaries_and_release_returns_everything() {
        let mut pool = BlockPool::new(4, 16);
        let mut t = Vec::new();
        pool.allocate_slots(&mut t, 1).unwrap();
        assert_eq!(t.len(), 1);
        pool.allocate_slots(&mut t, 16).unwrap();
        assert_eq!(t.len(), 1);
        pool.allocate_slots(&mut t, 17).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(pool.allocate_slots(&mut t, 100), Err(KvError::OutOfKvBlocks { needed: 5, free: 2 }));
        assert_eq!(t.len(), 2, "all-or-nothing");
        let mut u = Vec::new();
        pool.allocate_slots(&mut u, 32).unwrap();
        let mut all: Vec<u32> = t.iter().chain(&u).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4, "no block owned twice");
        assert_eq!(pool.usage(), 1.0);
        pool.release(&mut t).unwrap();
        pool.release(&mut u).unwrap();
        assert_eq!(pool.n_free(), 4);
        assert_eq!(pool.usage(), 0.0);
        ok(&pool);
    }

    #[test]
    fn shared_blocks_return_after_last_owner() {
        let mut pool = BlockPool::new(2, 4);
        let mut a = Vec::new();
        pool.allocate_slots(&mut a, 4).unwrap();
        pool.share(a[0]).unwrap();
        let mut b = vec![a[0]];
        pool.release(&mut a).unwrap();
        assert_eq!(pool.n_free(), 1);
        pool.release(&mut b).unwrap();
        assert_eq!(pool.n_free(), 2);
        ok(&pool);
    }

    /// Review 2026-12-07 §2: `share` on a free block left it free and owned at once, so the next
    /// allocation handed it to a second owner.
    #[test]
    fn share_of_a_free_cached_block_takes_it_out_of_the_free_queue() {
        let mut pool = BlockPool::new(3, 2);
        let mut a = Vec::new();
        pool.allocate_slots(&mut a, 2).unwrap();
        let b = a[0];
        let h = BlockHash::of(None, &[5, 6], None);
        pool.cache_full_block(0, b, h, None, &[5, 6], None);
        pool.release(&mut a).unwrap();
        assert!(pool.is_free(b) && pool.block_hash(b) == Some(h));
        pool.share(b).unwrap();
        ok(&pool);
        assert!(!pool.is_free(b));
        assert_eq!(pool.n_free(), 2);
        let mut other = Vec::new();
        pool.allocate_slots(&mut other, 4).unwrap();
        assert!(!other.contains(&b), "a shared block is never handed out again");
        assert_eq!(pool.block_hash(b), Some(h), "and keeps its hash");
        assert_eq!(pool.share(3), Err(KvError::InvalidBlock { block: 3, n_blocks: 3, reserved: 0 }));
        ok(&pool);
    }

    /// Review 2026-12-07 §2: a `DoubleFree` in the middle of `release` returned from inside the
    /// drain, dropping the remaining ids without a decrement (leaked blocks).
    #[test]
    fn release_with_a_bad_block_changes_nothing_and_leaks_nothing() {
        let mut pool = BlockPool::new(4, 1);
        let mut a = Vec::new();
        pool.allocate_slots(&mut a, 3).unwrap(); // [0, 1, 2]
        let free_before = pool.n_free();
        let mut bad = vec![a[0], 3, a[2]]; // 3 is free: no reference to release
        assert_eq!(pool.release(&mut bad), Err(KvError::DoubleFree { block: 3 }));
        assert_eq!(bad, [a[0], 3, a[2]], "table left as it was");
        assert_eq!(pool.n_free(), free_before);
        assert_eq!((pool.ref_cnt(a[0]), pool.ref_cnt(a[2])), (1, 1), "no decrement was kept");
        ok(&pool);
        let mut twice = vec![a[1], a[1]];
        assert_eq!(pool.release(&mut twice), Err(KvError::DoubleFree { block: a[1] }));
        assert_eq!(pool.ref_cnt(a[1]), 1);
        let mut out_of_range = vec![a[1], 9];
        assert!(matches!(pool.release(&mut out_of_range), Err(KvError::InvalidBlock { block: 9, .. })));
        ok(&pool);
        pool.release(&mut a).unwrap();
        assert_eq!(pool.n_free(), 4, "every block came back");
        ok(&pool);
    }

    /// Review 2026-12-07 §2: the LIFO free list reused the most recently freed (cached) blocks
    /// first. Now the least recently freed go first, and a table's tail is freed before its head.
    #[test]
    fn free_queue_is_lru_and_a_release_frees_tail_first() {
        let mut pool = BlockPool::new(6, 1);
        let mut a = Vec::new();
        pool.allocate_slots(&mut a, 3).unwrap();
        assert_eq!(a, [0, 1, 2], "fresh pool hands out ids in order");
        let mut b = Vec::new();
        pool.allocate_slots(&mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        pool.release(&mut a).unwrap();
        pool.release(&mut b).unwrap();
        assert_eq!(pool.free_queue().collect::<Vec<_>>(), [5, 2, 1, 0, 4, 3]);
        let mut c = Vec::new();
        pool.allocate_slots(&mut c, 4).unwrap();
        assert_eq!(c, [5, 2, 1, 0]);
        ok(&pool);
    }

    #[test]
    fn eviction_on_allocate_drops_the_hash() {
        let mut pool = BlockPool::new(2, 2);
        let mut a = Vec::new();
        pool.allocate_slots(&mut a, 4).unwrap();
        let h0 = BlockHash::of(None, &[1, 2], None);
        let r0 = pool.cache_full_block(0, a[0], h0, None, &[1, 2], None);
        let h1 = BlockHash::of(Some(h0), &[3, 4], None);
        pool.cache_full_block(0, a[1], h1, Some(r0), &[3, 4], None);
        pool.free_blocks(a.iter().rev().copied());
        assert_eq!(pool.num_cached_blocks(), 2);
        let mut t = Vec::new();
        pool.get_new_blocks(1, &mut t).unwrap();
        assert_eq!(t, [a[1]], "the tail block goes first");
        assert_eq!(pool.block_hash(a[1]), None);
        assert_eq!(pool.get_cached_block(0, h1, Some(r0), &[3, 4], None), None);
        assert_eq!(pool.get_cached_block(0, h0, None, &[1, 2], None), Some(r0), "the head survives");
        assert_eq!(pool.num_cached_blocks(), 1);
        ok(&pool);
    }

    #[test]
    fn a_hit_is_verified_exactly_so_collisions_never_share() {
        let mut pool = BlockPool::new(4, 2);
        let mut a = Vec::new();
        pool.get_new_blocks(3, &mut a).unwrap();
        let forged = BlockHash(42); // pretend every block hashes to 42
        let r = pool.cache_full_block(0, a[0], forged, None, &[1, 2], Some("s"));
        assert_eq!(pool.get_cached_block(0, forged, None, &[1, 2], Some("s")), Some(r));
        assert_eq!(pool.get_cached_block(0, forged, None, &[1, 3], Some("s")), None, "tokens differ");
        assert_eq!(pool.get_cached_block(0, forged, None, &[1, 2], None), None, "salt differs");
        assert_eq!(pool.get_cached_block(0, forged, Some(r), &[1, 2], Some("s")), None, "parent differs");
        // Same contents computed again by another request: the cached block stays canonical.
        assert_eq!(pool.cache_full_block(0, a[1], forged, None, &[1, 2], Some("s")), r);
        assert_eq!(pool.block_hash(a[1]), None);
        // Different contents under the same hash: the newer block wins, the older is uncached.
        let r2 = pool.cache_full_block(0, a[2], forged, None, &[9, 9], None);
        assert_eq!(r2.id(), a[2]);
        assert_eq!(pool.block_hash(a[0]), None);
        assert_eq!(pool.get_cached_block(0, forged, None, &[1, 2], Some("s")), None);
        ok(&pool);
    }

    #[test]
    fn a_re_cached_parent_does_not_revive_its_old_children() {
        let mut pool = BlockPool::new(2, 1);
        let mut a = Vec::new();
        pool.get_new_blocks(2, &mut a).unwrap();
        let h0 = BlockHash::of(None, &[1], None);
        let r0 = pool.cache_full_block(0, a[0], h0, None, &[1], None);
        let h1 = BlockHash::of(Some(h0), &[2], None);
        pool.cache_full_block(0, a[1], h1, Some(r0), &[2], None);
        assert_eq!(pool.verify_chain(0, &a), Ok(()));
        // Free the parent only, evict it and cache the same contents in the same block again.
        pool.free_blocks([a[0]]);
        let mut t = Vec::new();
        pool.get_new_blocks(1, &mut t).unwrap();
        let r0b = pool.cache_full_block(0, t[0], h0, None, &[1], None);
        assert_eq!(r0b.id(), r0.id());
        assert_ne!(r0b, r0, "new generation");
        assert_eq!(pool.get_cached_block(0, h1, Some(r0b), &[2], None), None, "the child named the old generation");
        assert_eq!(pool.verify_chain(0, &a), Err(KvError::StaleComputedBlock { block: a[1], index: 1 }));
        ok(&pool);
    }

    #[test]
    fn reset_prefix_cache_only_when_nothing_is_referenced() {
        let mut pool = BlockPool::new(2, 1);
        let mut a = Vec::new();
        pool.get_new_blocks(1, &mut a).unwrap();
        pool.cache_full_block(0, a[0], BlockHash(1), None, &[1], None);
        assert!(!pool.reset_prefix_cache());
        assert_eq!(pool.num_cached_blocks(), 1);
        pool.free_blocks([a[0]]);
        assert!(pool.reset_prefix_cache());
        assert_eq!(pool.num_cached_blocks(), 0);
        assert_eq!(pool.block_hash(a[0]), None);
        ok(&pool);
    }

    /// The old table API under random allocate / share / release, with the invariants checked
    /// after every operation and every block free at the end.
    #[test]
    fn random_table_operations_keep_the_invariants() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let n_blocks = rng.range(1, 24);
            let mut pool = BlockPool::new(n_blocks, rng.range(1, 4));
            let mut tables: Vec<Vec<u32>> = Vec::new();
            for _ in 0..300 {
                match rng.below(4) {
                    0 | 1 if !tables.is_empty() || rng.chance(0.5) => {
                        if tables.is_empty() || rng.chance(0.3) {
                            tables.push(Vec::new());
                        }
                        let i = rng.below(tables.len());
                        let (before, free) = (tables[i].clone(), pool.n_free());
                        let want = rng.below(pool.block_size() * (n_blocks + 2));
                        if pool.allocate_slots(&mut tables[i], want).is_err() {
                            assert_eq!((&tables[i], pool.n_free()), (&before, free), "all-or-nothing");
                        }
                    }
                    2 if !tables.is_empty() => {
                        let (i, j) = (rng.below(tables.len()), rng.below(tables.len()));
                        if let Some(&b) = tables[i].first() {
                            pool.share(b).unwrap();
                            tables[j].push(b);
                        }
                    }
                    _ if !tables.is_empty() => {
                        let i = rng.below(tables.len());
                        let mut t = tables.swap_remove(i);
                        pool.release(&mut t).unwrap();
                    }
                    _ => {}
                }
                ok(&pool);
                let owned: usize = tables.iter().map(|t| t.len()).sum();
                let refs: u32 = (0..n_blocks as u32).map(|b| pool.ref_cnt(b)).sum();
                assert_eq!(owned, refs as usize, "seed {seed}");
            }
            for mut t in tables {
                pool.release(&mut t).unwrap();
            }
            assert_eq!(pool.n_free(), pool.num_usable_blocks(), "seed {seed}");
            ok(&pool);
        }
    }
}
