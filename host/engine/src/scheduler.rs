//! The scheduler: one loop with no prefill or decode phases (vLLM v1). Every request has
//! `num_computed_tokens` (tokens whose K/V are in the cache) and `tokens` (prompt + output so
//! far); each step gives every request some of `tokens.len() - num_computed_tokens` under a token
//! budget, so prefill chunks and decode tokens share one forward pass and a long prompt never
//! stalls the others (chunked prefill).
//!
//! ```text
//!  step:  running (admission order)          waiting (FCFS; preempted ones at the front)
//!         A decode 1 | B prefill chunk 480  ←  C (admitted if blocks, budget and seats allow)
//!  budget 512:  A 1 + B 480 + C 31 (C's first chunk; the rest next step)
//! ```
//!
//! Rules:
//! - Running requests go first, in admission order; then waiting ones, first come first served
//!   (the head of the queue is never skipped, so nothing starves).
//! - When a running request cannot get blocks, the newest running request is preempted: its KV
//!   is freed and it goes to the front of the waiting queue with `num_computed_tokens = 0`; when
//!   readmitted it recomputes prompt + output so far (from the prefix cache where the blocks are
//!   still cached) and continues without losing or changing a token. No admission in a step that
//!   preempted (the freed blocks go to the running requests first).
//! - A request is admitted with the longest cached prefix of its tokens (`get_computed_blocks`;
//!   never the last token, so its logits are computed).
//! - A chunk wants logits (a token is sampled) only when it reaches the end of `tokens`.
//! - Prompt-lookup speculative decoding (`SchedulerConfig::prompt_lookup`): a decoding request
//!   whose last tokens also occur earlier in its prompt or output gets the tokens that followed
//!   them there as drafts, appended to `tokens` and computed in the same chunk (logits for every
//!   row). The engine verifies them against its own choices and calls [`Scheduler::resolve_drafts`],
//!   which drops the rejected ones; their K/V slots are simply rewritten later, and only blocks of
//!   verified tokens ever enter the prefix cache.
//!
//! ```text
//!  tokens  [ ... a b c | x ]  x not computed yet; "b c x" occurred before, followed by "y z"
//!  chunk   [ x y z ]          3 rows of logits: after x, after y, after z
//!  verify  model says y, then q  →  accept y, emit q; tokens [ ... a b c x y | q ]
//! ```
//!
//! Pure logic over ids and counts (DESIGN.md §2.6): tested without a model.

use std::collections::{HashMap, VecDeque};

use crate::kv_manager::{KvCacheManager, RequestId};

/// Limits of one step (vLLM's names).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Tokens computed per step at most (prefill chunks + decode tokens).
    pub max_num_batched_tokens: usize,
    /// Sequences running at once at most.
    pub max_num_seqs: usize,
    /// Requests waiting at most; past that a new request is refused as busy.
    pub max_waiting: usize,
    pub enable_prefix_caching: bool,
    /// Draft tokens per step for prompt-lookup speculative decoding (0 = off).
    pub prompt_lookup: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_num_batched_tokens: 512, max_num_seqs: 64, max_waiting: 512, enable_prefix_caching: true, prompt_lookup: 0 }
    }
}

/// Longest n-gram (in tokens) matched against the sequence's history for drafts.
const LOOKUP_NGRAM_MAX: usize = 3;

/// Prompt lookup: find the most recent earlier occurrence of the sequence's last n tokens
/// (n = LOOKUP_NGRAM_MAX down to 1) and propose the up to `k` tokens that followed it.
pub fn prompt_lookup(tokens: &[u32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    for n in (1..=LOOKUP_NGRAM_MAX.min(tokens.len().saturating_sub(1))).rev() {
        let pat = &tokens[tokens.len() - n..];
        // Candidates end before the pattern itself; the most recent match wins.
        for start in (0..tokens.len() - n).rev() {
            if &tokens[start..start + n] == pat {
                let from = start + n;
                let to = (from + k).min(tokens.len());
                if from < to {
                    return tokens[from..to].to_vec();
                }
            }
        }
    }
    Vec::new()
}

/// The scheduler's view of one request.
#[derive(Clone, Debug)]
pub struct SeqState {
    pub id: RequestId,
    /// Prompt followed by the output so far.
    pub tokens: Vec<u32>,
    pub num_prompt_tokens: usize,
    pub num_computed_tokens: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    pub num_cached_tokens: usize,
    pub cache_salt: Option<String>,
    pub admitted: bool,
    pub preemptions: usize,
    /// Draft tokens at the end of `tokens`, not yet verified (0 outside a speculative step).
    pub num_draft: usize,
    /// Most drafts this request may take per step (0 = no speculation: sampled requests, a
    /// constraint, or the last tokens of `max_tokens`); set by the engine.
    pub max_draft: usize,
    /// Chained hashes of the full blocks of `tokens` computed so far by the prefix-cache lookup
    /// (`KvManager::get_computed_blocks_memo`), so a waiting request is not rehashed each step.
    pub block_hashes: Vec<crate::block_pool::BlockHash>,
}

impl SeqState {
    pub fn new(id: RequestId, prompt: Vec<u32>, cache_salt: Option<String>) -> Self {
        SeqState {
            id,
            num_prompt_tokens: prompt.len(),
            tokens: prompt,
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            cache_salt,
            admitted: false,
            preemptions: 0,
            num_draft: 0,
            max_draft: 0,
            block_hashes: Vec::new(),
        }
    }
}

/// One request's share of a step: `tokens[start..start + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub id: RequestId,
    pub start: usize,
    pub len: usize,
    /// The chunk reaches the end of the request's tokens: its last row's logits are sampled.
    pub sample: bool,
    /// The chunk's last `num_draft` tokens are drafts: every row from the last verified token
    /// on has logits (`num_draft + 1` rows) to verify them.
    pub num_draft: usize,
}

#[derive(Clone, Debug, Default)]
pub struct SchedulerOutput {
    pub chunks: Vec<ScheduledChunk>,
    /// Requests preempted in this step (their KV was freed).
    pub preempted: Vec<RequestId>,
    /// Requests scheduled for the first time in this step.
    pub first_scheduled: Vec<RequestId>,
    /// Draft tokens scheduled in this step.
    pub num_draft_tokens: usize,
}

impl SchedulerOutput {
    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedError {
    #[error("server busy: {waiting} requests are already waiting (limit {limit}); retry later")]
    Busy { waiting: usize, limit: usize },
    #[error("request {0} is already known")]
    Duplicate(RequestId),
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvCacheManager,
    reqs: HashMap<RequestId, SeqState>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, kv: KvCacheManager) -> Self {
        Scheduler { cfg, kv, reqs: HashMap::new(), waiting: VecDeque::new(), running: Vec::new() }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    pub fn kv_mut(&mut self) -> &mut KvCacheManager {
        &mut self.kv
    }

    pub fn get(&self, id: RequestId) -> Option<&SeqState> {
        self.reqs.get(&id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Queue a request (refused when the waiting queue is full).
    pub fn add_request(&mut self, s: SeqState) -> Result<(), SchedError> {
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(SchedError::Busy { waiting: self.waiting.len(), limit: self.cfg.max_waiting });
        }
        if self.reqs.contains_key(&s.id) {
            return Err(SchedError::Duplicate(s.id));
        }
        self.waiting.push_back(s.id);
        self.reqs.insert(s.id, s);
        Ok(())
    }

    /// Pick the work of the next step (see the module header).
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let s = &self.reqs[&id];
            let (start, n) = (s.num_computed_tokens, (s.tokens.len() - s.num_computed_tokens).min(budget));
            if n == 0 {
                i += 1;
                continue;
            }
            let total = s.tokens.len();
            // Decoding (one token left to compute): propose drafts when speculation is on.
            let mut drafts = if n == 1 && total == start + 1 && self.cfg.prompt_lookup > 0 && s.max_draft > 0 {
                prompt_lookup(&s.tokens, self.cfg.prompt_lookup.min(s.max_draft).min(budget - 1))
            } else {
                Vec::new()
            };
            loop {
                let nd = drafts.len();
                if self.kv.allocate_slots(id, start + n + nd, &[]).is_ok() {
                    let s = self.reqs.get_mut(&id).expect("running ids are known");
                    s.tokens.extend_from_slice(&drafts);
                    s.num_draft = nd;
                    out.chunks.push(ScheduledChunk { id, start, len: n + nd, sample: start + n == total, num_draft: nd });
                    out.num_draft_tokens += nd;
                    budget -= n + nd;
                    i += 1;
                    break;
                }
                if !drafts.is_empty() {
                    // Blocks are short: drop the drafts before preempting anyone.
                    drafts.clear();
                    continue;
                }
                // Out of blocks: preempt the newest running request (possibly this one).
                let victim = self.running.pop().expect("running holds at least request i");
                self.preempt(victim);
                out.preempted.push(victim);
                if victim == id {
                    break;
                }
            }
        }
        if out.preempted.is_empty() {
            while let Some(&id) = self.waiting.front() {
                if self.running.len() >= self.cfg.max_num_seqs || budget == 0 {
                    break;
                }
                let (blocks, n_cached) = if self.cfg.enable_prefix_caching {
                    let s = self.reqs.get_mut(&id).expect("waiting ids are known");
                    self.kv.get_computed_blocks_memo(&s.tokens, s.cache_salt.as_deref(), &mut s.block_hashes)
                } else {
                    (Vec::new(), 0)
                };
                let s = &self.reqs[&id];
                let total = s.tokens.len();
                let n = (total - n_cached).min(budget);
                if self.kv.allocate_slots(id, n_cached + n, &blocks).is_err() {
                    break;
                }
                let s = self.reqs.get_mut(&id).expect("waiting ids are known");
                s.num_computed_tokens = n_cached;
                if !s.admitted {
                    s.admitted = true;
                    s.num_cached_tokens = n_cached.min(s.num_prompt_tokens);
                    out.first_scheduled.push(id);
                }
                out.chunks.push(ScheduledChunk { id, start: n_cached, len: n, sample: n_cached + n == total, num_draft: 0 });
                budget -= n;
                self.waiting.pop_front();
                self.running.push(id);
            }
        }
        out
    }

    fn preempt(&mut self, id: RequestId) {
        self.kv.free(id);
        let s = self.reqs.get_mut(&id).expect("running ids are known");
        s.num_computed_tokens = 0;
        s.preemptions += 1;
        self.waiting.push_front(id);
    }

    /// The step's forward pass ran: advance `num_computed_tokens`, register newly full
    /// blocks in the prefix cache, and give back the blocks that fell behind sliding windows
    /// (the next chunk's first query is at `num_computed_tokens`).
    /// Chunks with drafts wait for [`resolve_drafts`](Self::resolve_drafts).
    pub fn on_step_done(&mut self, out: &SchedulerOutput) {
        for c in &out.chunks {
            if c.num_draft > 0 {
                continue;
            }
            let Some(s) = self.reqs.get_mut(&c.id) else { continue };
            s.num_computed_tokens = c.start + c.len;
            if self.cfg.enable_prefix_caching {
                self.kv.cache_full_blocks(c.id, &s.tokens, s.num_computed_tokens, s.cache_salt.as_deref());
            }
            self.kv.remove_skipped_blocks(c.id, s.num_computed_tokens);
        }
    }

    /// The engine verified `id`'s drafts of this step: the first `accepted` stay (their K/V,
    /// written in the step, is valid), the rest are dropped. Follow with `append_token` of the
    /// token the model chose after the last accepted one.
    pub fn resolve_drafts(&mut self, id: RequestId, accepted: usize) {
        let Some(s) = self.reqs.get_mut(&id) else { return };
        let accepted = accepted.min(s.num_draft);
        s.tokens.truncate(s.tokens.len() - s.num_draft + accepted);
        s.num_draft = 0;
        // Hashes of blocks that held rejected drafts are no longer this request's.
        let full = s.tokens.len() / self.kv.block_size();
        s.block_hashes.truncate(full);
        s.num_computed_tokens = s.tokens.len();
        if self.cfg.enable_prefix_caching {
            self.kv.cache_full_blocks(id, &s.tokens, s.num_computed_tokens, s.cache_salt.as_deref());
        }
        self.kv.remove_skipped_blocks(id, s.num_computed_tokens);
    }

    /// How many drafts `id` may take per step from now on (see `SeqState::max_draft`).
    pub fn set_max_draft(&mut self, id: RequestId, n: usize) {
        if let Some(s) = self.reqs.get_mut(&id) {
            s.max_draft = n;
        }
    }

    /// A token was sampled for `id`: it becomes the next token to compute.
    pub fn append_token(&mut self, id: RequestId, token: u32) {
        if let Some(s) = self.reqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    /// Remove a request in any state and free its blocks at once (finish, cancel, error).
    pub fn finish(&mut self, id: RequestId) -> Option<SeqState> {
        let s = self.reqs.remove(&id)?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&r| r != id);
        self.kv.free(id);
        Some(s)
    }

    /// Requests in scheduling order (running, then waiting).
    pub fn ids(&self) -> Vec<RequestId> {
        self.running.iter().chain(&self.waiting).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(n_blocks: usize, budget: usize, seats: usize) -> Scheduler {
        let cfg = SchedulerConfig {
            max_num_batched_tokens: budget,
            max_num_seqs: seats,
            max_waiting: 8,
            enable_prefix_caching: true,
            prompt_lookup: 0,
        };
        Scheduler::new(cfg, KvCacheManager::new(n_blocks, 4, true))
    }

    /// Run steps, sampling token `1000 + id` whenever a chunk reaches the end, until every
    /// request has `gen` output tokens; returns the outputs and the steps' outputs.
    fn drive(s: &mut Scheduler, ids: &[RequestId], gen: usize) -> (HashMap<RequestId, Vec<u32>>, Vec<SchedulerOutput>) {
        let mut outs: HashMap<RequestId, Vec<u32>> = ids.iter().map(|&i| (i, Vec::new())).collect();
        let mut steps = Vec::new();
        for _ in 0..10_000 {
            if s.is_idle() {
                break;
            }
            let o = s.schedule();
            assert!(o.num_tokens() <= s.config().max_num_batched_tokens);
            s.on_step_done(&o);
            s.kv().check_invariants().unwrap();
            for c in &o.chunks {
                assert!(c.len > 0);
                if c.sample {
                    let v = outs.get_mut(&c.id).unwrap();
                    let t = 1000 + c.id as u32 + v.len() as u32;
                    v.push(t);
                    if v.len() == gen {
                        s.finish(c.id);
                    } else {
                        s.append_token(c.id, t);
                    }
                }
            }
            steps.push(o);
        }
        assert!(s.is_idle(), "every request finished");
        (outs, steps)
    }

    #[test]
    fn chunked_prefill_shares_the_budget_and_decodes_go_first() {
        let mut s = sched(64, 8, 4);
        s.add_request(SeqState::new(1, (0..20).collect(), None)).unwrap();
        let o = s.schedule();
        assert_eq!(o.chunks, vec![ScheduledChunk { id: 1, start: 0, len: 8, sample: false, num_draft: 0 }]);
        s.on_step_done(&o);
        s.add_request(SeqState::new(2, (100..103).collect(), None)).unwrap();
        let o = s.schedule();
        // Request 1 (running) first, then 2 gets nothing: the budget is spent.
        assert_eq!(o.chunks, vec![ScheduledChunk { id: 1, start: 8, len: 8, sample: false, num_draft: 0 }]);
        s.on_step_done(&o);
        let o = s.schedule();
        assert_eq!(
            o.chunks,
            vec![
                ScheduledChunk { id: 1, start: 16, len: 4, sample: true, num_draft: 0 },
                ScheduledChunk { id: 2, start: 0, len: 3, sample: true, num_draft: 0 }
            ]
        );
    }

    #[test]
    fn preempted_request_resumes_and_finishes() {
        // 6 blocks of 4 tokens: two requests of 8-token prompts + 12 outputs cannot both fit.
        let mut s = sched(6, 64, 4);
        s.add_request(SeqState::new(1, (0..8).collect(), None)).unwrap();
        s.add_request(SeqState::new(2, (50..58).collect(), None)).unwrap();
        let (outs, steps) = drive(&mut s, &[1, 2], 12);
        assert!(steps.iter().any(|o| o.preempted.contains(&2)), "the newer request was preempted");
        assert!(steps.iter().all(|o| !o.preempted.contains(&1)), "the older one never was");
        for (id, v) in outs {
            let want: Vec<u32> = (0..12).map(|k| 1000 + id as u32 + k).collect();
            assert_eq!(v, want);
        }
        assert_eq!(s.kv().num_free_blocks(), 6);
    }

    #[test]
    fn prefix_cache_hit_on_second_request_never_covers_last_token() {
        let mut s = sched(32, 64, 4);
        let prompt: Vec<u32> = (0..16).collect();
        s.add_request(SeqState::new(1, prompt.clone(), None)).unwrap();
        drive(&mut s, &[1], 1);
        s.add_request(SeqState::new(2, prompt.clone(), None)).unwrap();
        let o = s.schedule();
        // 16 tokens = 4 full blocks cached; the last block is recomputed for the logits.
        assert_eq!(o.chunks, vec![ScheduledChunk { id: 2, start: 12, len: 4, sample: true, num_draft: 0 }]);
        assert_eq!(s.get(2).unwrap().num_cached_tokens, 12);
        // A different salt shares nothing.
        s.add_request(SeqState::new(3, prompt, Some("tenant".into()))).unwrap();
        let o = s.schedule();
        assert!(o.chunks.iter().any(|c| c.id == 3 && c.start == 0 && c.len == 16));
    }

    /// Sliding-window groups (`KvCacheManager::with_groups`): blocks behind the window are given
    /// back after each step, so a pool too small for two long requests kept whole serves them
    /// with fewer preemptions, and every output is still exactly its own.
    #[test]
    fn sliding_groups_give_back_blocks_and_keep_outputs() {
        use rocmforge_runtime::KvKind;
        let run = |kinds: &[KvKind], n_blocks: usize| {
            let cfg = SchedulerConfig {
                max_num_batched_tokens: 8,
                max_num_seqs: 4,
                max_waiting: 8,
                enable_prefix_caching: true,
                prompt_lookup: 0,
            };
            let mut s = Scheduler::new(cfg, KvCacheManager::with_groups(n_blocks, 4, true, kinds));
            s.add_request(SeqState::new(1, (0..40).collect(), None)).unwrap();
            s.add_request(SeqState::new(2, (100..140).collect(), None)).unwrap();
            let (outs, steps) = drive(&mut s, &[1, 2], 20);
            for (id, v) in outs {
                let want: Vec<u32> = (0..20).map(|k| 1000 + id as u32 + k).collect();
                assert_eq!(v, want);
            }
            assert_eq!(s.kv().num_free_blocks(), n_blocks);
            steps.iter().map(|o| o.preempted.len()).sum::<usize>()
        };
        // 60 tokens need 15 blocks per group: two requests kept whole need 60 blocks of two
        // groups; with a window of 8 the sliding group holds at most 5 blocks each (7 keys
        // behind a chunk of 8, plus one for alignment).
        let kept = run(&[KvKind::Full, KvKind::Full], 40);
        let freed = run(&[KvKind::Full, KvKind::Sliding(8)], 40);
        assert!(kept > 0, "the pool is too small for both kept whole");
        assert_eq!(freed, 0, "15 + 5 blocks each fit twice in 40");
    }

    #[test]
    fn seats_and_queue_limits() {
        let mut s = sched(64, 64, 1);
        s.add_request(SeqState::new(1, vec![1, 2], None)).unwrap();
        s.add_request(SeqState::new(2, vec![3, 4], None)).unwrap();
        let o = s.schedule();
        assert_eq!(o.chunks.len(), 1, "one seat");
        for id in 3..=9 {
            s.add_request(SeqState::new(id, vec![5], None)).unwrap();
        }
        assert_eq!(s.add_request(SeqState::new(10, vec![5], None)), Err(SchedError::Busy { waiting: 8, limit: 8 }));
    }

    #[test]
    fn cancel_in_every_state_frees_everything() {
        let mut s = sched(16, 6, 4);
        s.add_request(SeqState::new(1, (0..20).collect(), None)).unwrap();
        s.add_request(SeqState::new(2, (0..3).collect(), None)).unwrap();
        let o = s.schedule();
        s.on_step_done(&o);
        assert!(s.finish(2).is_some(), "waiting request cancelled");
        let o = s.schedule();
        s.on_step_done(&o);
        assert!(s.finish(1).is_some(), "running request mid-prefill cancelled");
        assert!(s.finish(1).is_none());
        assert!(s.is_idle());
        assert_eq!(s.kv().num_free_blocks(), 16);
        s.kv().check_invariants().unwrap();
    }

    #[test]
    fn prompt_lookup_proposes_what_followed_the_latest_match() {
        // "7 8" occurred twice; the later occurrence (followed by 30, 31) wins.
        let t = [1, 7, 8, 20, 21, 7, 8, 30, 31, 5, 7, 8];
        assert_eq!(prompt_lookup(&t, 2), vec![30, 31]);
        assert_eq!(prompt_lookup(&t, 5), vec![30, 31, 5, 7, 8]);
        assert_eq!(prompt_lookup(&[1, 2, 3], 4), Vec::<u32>::new(), "no earlier occurrence");
        assert_eq!(prompt_lookup(&t, 0), Vec::<u32>::new());
    }

    #[test]
    fn drafts_are_scheduled_then_resolved() {
        let cfg =
            SchedulerConfig { max_num_batched_tokens: 64, max_num_seqs: 4, max_waiting: 8, enable_prefix_caching: true, prompt_lookup: 3 };
        let mut s = Scheduler::new(cfg, KvCacheManager::new(16, 4, true));
        s.add_request(SeqState::new(1, vec![1, 2, 3, 4, 9, 1, 2], None)).unwrap();
        s.set_max_draft(1, 3);
        let o = s.schedule();
        assert_eq!(o.chunks[0].num_draft, 0, "prefill gets no drafts");
        s.on_step_done(&o);
        s.append_token(1, 3);
        // tokens ... 9 1 2 3: "1 2 3" occurred at the start, followed by 4 9 1.
        let o = s.schedule();
        assert_eq!(o.chunks, vec![ScheduledChunk { id: 1, start: 7, len: 4, sample: true, num_draft: 3 }]);
        assert_eq!(&s.get(1).unwrap().tokens[7..], &[3, 4, 9, 1]);
        s.on_step_done(&o);
        // The model agreed with the first draft only, then chose 6.
        s.resolve_drafts(1, 1);
        s.append_token(1, 6);
        let st = s.get(1).unwrap();
        assert_eq!(st.tokens, vec![1, 2, 3, 4, 9, 1, 2, 3, 4, 6]);
        assert_eq!(st.num_computed_tokens, 9);
        s.kv().check_invariants().unwrap();
    }

    /// Random arrivals, lengths, shared prefixes and cancellations: invariants hold at every
    /// step, each request's output is exactly its own (preemption never loses or changes a
    /// token), and all blocks are free at the end.
    #[test]
    fn random_workloads_keep_invariants() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _round in 0..40 {
            let n_blocks = 8 + rnd(24) as usize;
            let mut s = sched(n_blocks, 4 + rnd(40) as usize, 1 + rnd(6) as usize);
            let mut next_id = 1u64;
            let mut outs: HashMap<RequestId, (usize, Vec<u32>)> = HashMap::new();
            for _step in 0..400 {
                if rnd(3) == 0 && s.num_waiting() < 8 {
                    // Prompts from a few shared prefixes; total length fits the pool.
                    let base = rnd(3) as u32 * 100;
                    let len = 1 + rnd((n_blocks as u64 * 4 / 2).max(2)) as usize;
                    let prompt: Vec<u32> = (0..len as u32).map(|k| base + k).collect();
                    let gen = 1 + rnd(10) as usize;
                    if len + gen <= n_blocks * 4 {
                        s.add_request(SeqState::new(next_id, prompt, None)).unwrap();
                        outs.insert(next_id, (gen, Vec::new()));
                        next_id += 1;
                    }
                }
                if rnd(25) == 0 {
                    let ids = s.ids();
                    if !ids.is_empty() {
                        let id = ids[rnd(ids.len() as u64) as usize];
                        s.finish(id);
                        outs.remove(&id);
                    }
                }
                let o = s.schedule();
                s.on_step_done(&o);
                s.kv().check_invariants().unwrap();
                for c in &o.chunks {
                    if c.sample {
                        let (gen, v) = outs.get_mut(&c.id).unwrap();
                        let t = 1_000_000 + c.id as u32 * 100 + v.len() as u32;
                        v.push(t);
                        if v.len() == *gen {
                            s.finish(c.id);
                        } else {
                            s.append_token(c.id, t);
                        }
                    }
                }
            }
            for id in s.ids() {
                s.finish(id);
            }
            s.kv().check_invariants().unwrap();
            assert_eq!(s.kv().num_free_blocks(), n_blocks);
            for (id, (_, v)) in outs {
                let want: Vec<u32> = (0..v.len() as u32).map(|k| 1_000_000 + id as u32 * 100 + k).collect();
                assert_eq!(v, want);
            }
        }
    }
}
