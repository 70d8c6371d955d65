//! Per-step batch metadata: everything a backend needs about one forward pass in one struct,
//! built and validated before any KV is written.
//!
//! ```text
//!  chunks:   seq 0: 3 tokens from pos 10 (Last) | seq 1: 1 token from pos 4 (Last)
//!  tokens    [a b c | d]        positions [10 11 12 | 4]
//!  seqs      [{start 0, len 3, pos 10, table 0..1}, {start 3, len 1, pos 4, table 1..2}]
//!  out_ids   [2, 3]             (rows whose logits are wanted, in chunk order)
//! ```
//!
//! With several KV groups (`kv_layout.rs`), each group has its own concatenation of tables;
//! every sequence's `table` range is the same in all of them (each group's table covers the
//! same positions).
//!
//! Validation (each error names the chunk): a chunk asking for logits has tokens; block tables
//! (one per KV group) cover the chunk's positions and name blocks of the pool or
//! [`NULL_BLOCK`] (a block given back behind a sliding window; attention checks that it never
//! needs one); token ids are inside the embedding
//! table; a pooling (embedding) graph gets whole sequences. A bad chunk fails here, never inside
//! a kernel after other sequences' K/V were written. All per-step data lives here, so a GPU
//! backend can copy it into persistent device buffers and replay a captured graph.

use std::ops::Range;

use crate::exec::{KvConfig, Logits, SeqBatch};
use crate::kv_layout::NULL_BLOCK;
use crate::plan::Plan;
use crate::RuntimeError;

/// One sequence's part of the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqMeta {
    /// First row of the sequence's tokens in the batch.
    pub start: usize,
    pub len: usize,
    /// Position of its first token.
    pub pos_start: usize,
    /// Its block table inside each group's list of `BatchMeta::block_tables`.
    pub table: Range<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct BatchMeta {
    pub tokens: Vec<u32>,
    pub positions: Vec<i32>,
    /// Token rows whose output is wanted, in chunk order.
    pub out_ids: Vec<usize>,
    pub seqs: Vec<SeqMeta>,
    /// Per KV group: every sequence's block table, concatenated.
    pub block_tables: Vec<Vec<u32>>,
}

impl BatchMeta {
    pub fn new(batch: &SeqBatch, kv: KvConfig, n_groups: usize, plan: &Plan) -> Result<BatchMeta, RuntimeError> {
        let bad = |i: usize, what: String| RuntimeError::Batch(format!("sequence {i} of the batch: {what}"));
        let n_tokens: usize = batch.iter().map(|c| c.tokens.len()).sum();
        let mut m = BatchMeta {
            tokens: Vec::with_capacity(n_tokens),
            positions: Vec::with_capacity(n_tokens),
            out_ids: Vec::new(),
            seqs: Vec::with_capacity(batch.len()),
            block_tables: vec![Vec::new(); n_groups.max(1)],
        };
        for (i, c) in batch.iter().enumerate() {
            if c.tokens.is_empty() && c.logits != Logits::None {
                return Err(bad(i, "no tokens, but output rows were asked for".into()));
            }
            if plan.pools && (c.pos_start != 0 || c.tokens.is_empty()) {
                return Err(bad(
                    i,
                    "a pooling (embedding) model needs every sequence whole and non-empty in one chunk (pos_start 0)".into(),
                ));
            }
            let end = c.pos_start + c.tokens.len();
            let need = end.div_ceil(kv.block_size);
            if c.group_tables.len() + 1 != m.block_tables.len() {
                return Err(bad(i, format!("{} block tables for a KV cache of {} groups", c.group_tables.len() + 1, m.block_tables.len())));
            }
            let tables = std::iter::once(c.block_table).chain(c.group_tables.iter().map(Vec::as_slice));
            for (g, table) in tables.enumerate() {
                if table.len() < need {
                    return Err(bad(i, format!("block table of group {g}: {} blocks for {end} positions", table.len())));
                }
                if let Some(&b) = table[..need].iter().find(|&&b| b as usize >= kv.n_blocks && b != NULL_BLOCK) {
                    return Err(bad(i, format!("KV block {b} out of range (pool of {})", kv.n_blocks)));
                }
            }
            if let Some(n_rows) = plan.n_token_rows {
                if let Some(&t) = c.tokens.iter().find(|&&t| t as usize >= n_rows) {
                    return Err(bad(i, format!("token id {t} out of range (embedding table of {n_rows} rows)")));
                }
            }
            let base = m.tokens.len();
            match c.logits {
                Logits::None => {}
                Logits::Last => m.out_ids.push(base + c.tokens.len() - 1),
                Logits::All => m.out_ids.extend(base..base + c.tokens.len()),
            }
            let t0 = m.block_tables[0].len();
            m.block_tables[0].extend_from_slice(&c.block_table[..need]);
            for (dst, t) in m.block_tables[1..].iter_mut().zip(c.group_tables) {
                dst.extend_from_slice(&t[..need]);
            }
            m.seqs.push(SeqMeta { start: base, len: c.tokens.len(), pos_start: c.pos_start, table: t0..t0 + need });
            m.tokens.extend_from_slice(c.tokens);
            m.positions.extend((c.pos_start..end).map(|p| p as i32));
        }
        Ok(m)
    }

    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn n_outputs(&self) -> usize {
        self.out_ids.len()
    }

    pub fn n_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Sequence `s`'s block table of KV group `group`.
    pub fn block_table(&self, group: usize, s: usize) -> &[u32] {
        &self.block_tables[group][self.seqs[s].table.clone()]
    }
}
