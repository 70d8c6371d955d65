//! The KV block pool: fixed-size blocks of token slots, handed out to sequences and returned when
//! they finish. Modelled on vLLM's `BlockPool` / `KVCacheManager.allocate_slots`.
//!
//! ```text
//!  sequence: positions 0..37, block_size 16 -> block table [7, 2, 9]
//!  block 7: pos 0..15 | block 2: pos 16..31 | block 9: pos 32..37 (10 free slots)
//!  allocate_slots(seq, n_new) appends blocks only when pos_end crosses a block boundary.
//! ```
//! Invariants: every block id is either in the free list or owned (ref_count > 0), never both;
//! ref counts return to zero when every owner has released the block.

/// Errors of the block pool.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("out of KV cache blocks: need {needed}, {free} free")]
    OutOfKvBlocks { needed: usize, free: usize },
    #[error("block {0} released more often than it was taken")]
    DoubleFree(u32),
}

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    ref_count: Vec<u32>,
    free: Vec<u32>,
}

impl BlockPool {
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        BlockPool { block_size, ref_count: vec![0; n_blocks], free: (0..n_blocks as u32).rev().collect() }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    pub fn n_blocks(&self) -> usize {
        self.ref_count.len()
    }

    /// Blocks needed to hold `n_tokens` positions.
    pub fn blocks_for(&self, n_tokens: usize) -> usize {
        n_tokens.div_ceil(self.block_size)
    }

    /// Grow `table` so that it covers `n_tokens` positions. All-or-nothing.
    pub fn allocate_slots(&mut self, table: &mut Vec<u32>, n_tokens: usize) -> Result<(), KvError> {
        let need = self.blocks_for(n_tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return Err(KvError::OutOfKvBlocks { needed: need, free: self.free.len() });
        }
        for _ in 0..need {
            let b = self.free.pop().expect("checked above");
            self.ref_count[b as usize] = 1;
            table.push(b);
        }
        Ok(())
    }

    /// Take another reference to a block (prefix sharing).
    pub fn share(&mut self, b: u32) {
        self.ref_count[b as usize] += 1;
    }

    /// Release every block of a table.
    pub fn release(&mut self, table: &mut Vec<u32>) -> Result<(), KvError> {
        for b in table.drain(..) {
            let rc = &mut self.ref_count[b as usize];
            if *rc == 0 {
                return Err(KvError::DoubleFree(b));
            }
            *rc -= 1;
            if *rc == 0 {
                self.free.push(b);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        pool.release(&mut t).unwrap();
        pool.release(&mut u).unwrap();
        assert_eq!(pool.n_free(), 4);
    }

    #[test]
    fn shared_blocks_return_after_last_owner() {
        let mut pool = BlockPool::new(2, 4);
        let mut a = Vec::new();
        pool.allocate_slots(&mut a, 4).unwrap();
        pool.share(a[0]);
        let mut b = vec![a[0]];
        pool.release(&mut a).unwrap();
        assert_eq!(pool.n_free(), 1);
        pool.release(&mut b).unwrap();
        assert_eq!(pool.n_free(), 2);
        let mut c = vec![0];
        assert!(matches!(pool.release(&mut c), Err(KvError::DoubleFree(_))));
    }
}
