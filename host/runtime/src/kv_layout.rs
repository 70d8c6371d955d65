//! KV cache groups: which layers share a block table, and where each layer's K/V lives inside a
//! block.
//!
//! Layers differ in how much history their attention reads: a full layer every earlier position,
//! a sliding-window layer (Mistral, the local layers of Gemma 2/3) only the last `w`. Each layer's
//! [`KvKind`] comes from the window its ATTENTION op carries (`AttnP::sliding_window`, reported
//! in [`LayerKv::kind`](crate::graph::LayerKv)). Layers of one kind can share a block table; the
//! engine keeps one table per group and sequence and gives back the blocks of sliding groups that
//! fall behind the window (`rocmforge_engine`'s `kv_manager.rs`). Modelled on vLLM v1's hybrid
//! KV cache (uniform page size over `KVCacheGroupSpec`s); our own code.
//!
//! One pool of block ids serves every group, so a block has the same size whichever group holds
//! it: each kind's layers are split into groups of `n_slots` layers (the smallest kind's layer
//! count), and a block holds the K/V of `n_slots` layers, layer `j` of its group in slot `j`.
//! Gemma-3-270M (18 layers, every 6th global) gets `n_slots` 3 and 6 groups:
//!
//! ```text
//!   group 0  full         layers  5 11 17      block b held by group 2:
//!   group 1  sliding 512  layers  0  1  2        slot 0: K/V of layer 3
//!   group 2  sliding 512  layers  3  4  6        slot 1: K/V of layer 4
//!   ...                                          slot 2: K/V of layer 6
//!   group 5  sliding 512  layers 14 15 16
//! ```
//!
//! A block is then 3 layers' K/V instead of 18: a sequence shorter than the window takes 6 times
//! as many (6 times smaller) blocks, the same bytes; past the window the five sliding groups keep
//! about `window / block_size` blocks each, whatever the length.
//!
//! [`KvLayout::single`] puts every layer in one group of kind full (slot = layer index, nothing is
//! ever freed): the layout of executors built without one, the same memory bit for bit as before
//! groups existed. A model with one kind only gets that layout too (with its kind), so all-full
//! models (LLaMA, Qwen, SmolLM2) are unchanged by [`KvLayout::by_kind`].
//!
//! Freed entries of a block table hold [`NULL_BLOCK`]. Attention reads keys from
//! `q_pos + 1 - window` on, and the engine frees only blocks that end before the window of the
//! earliest query it will still compute, so no kernel ever reads one; the CPU backend checks the
//! blocks in each query's range up front and the GPU kernel skips a null entry.

use crate::graph::Graph;

// The GPU kernels know the null block by value.
const _: () = assert!(NULL_BLOCK == rocmforge_gpu::NULL_BLOCK);

/// Block table entry of a block given back (behind a sliding window, or never taken because a
/// prefix-cache hit did not need it). Never a valid block id.
pub const NULL_BLOCK: u32 = u32::MAX;

/// How much of the past one layer's attention reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvKind {
    /// Every earlier position (and, for encoders, every position of the sequence).
    Full,
    /// Only the last `w` positions up to the query (`key > q_pos - w`).
    Sliding(usize),
}

impl KvKind {
    /// The window, if any.
    pub fn window(self) -> Option<usize> {
        match self {
            KvKind::Full => None,
            KvKind::Sliding(w) => Some(w),
        }
    }
}

impl std::fmt::Display for KvKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvKind::Full => write!(f, "full"),
            KvKind::Sliding(w) => write!(f, "sliding window {w}"),
        }
    }
}

/// Layers sharing one block table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvGroup {
    pub kind: KvKind,
    /// Layer indices; layer `layers[j]` keeps its K/V in slot `j` of the group's blocks (in a
    /// one-group layout, slot = layer index instead: see [`KvLayout::place`]).
    pub layers: Vec<usize>,
}

/// The groups of one model and the place of every layer's K/V (see the module header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLayout {
    groups: Vec<KvGroup>,
    /// Layers' K/V per block (the KV cache allocates this many layer planes).
    n_slots: usize,
    /// Per layer index: (group, slot); None for an index without an attention op.
    place: Vec<Option<(usize, usize)>>,
}

impl KvLayout {
    /// Every layer in one group of kind full, slot = layer index (see the module header).
    pub fn single(g: &Graph) -> KvLayout {
        Self::one_group(g, KvKind::Full)
    }

    /// Groups by kind (see the module header); one group when every layer has the same kind.
    pub fn by_kind(g: &Graph) -> KvLayout {
        let mut kinds: Vec<(KvKind, Vec<usize>)> = Vec::new();
        for (il, l) in g.layers.iter().enumerate() {
            let Some(l) = l else { continue };
            match kinds.iter_mut().find(|(k, _)| *k == l.kind) {
                Some((_, v)) => v.push(il),
                None => kinds.push((l.kind, vec![il])),
            }
        }
        if kinds.len() <= 1 {
            return Self::one_group(g, kinds.first().map_or(KvKind::Full, |k| k.0));
        }
        // Full layers first, then windows from small to large: a stable, readable order.
        kinds.sort_by_key(|k| k.0);
        let n_slots = kinds.iter().map(|k| k.1.len()).min().expect("two kinds or more");
        let mut groups = Vec::new();
        let mut place = vec![None; g.layers.len()];
        for (kind, layers) in kinds {
            for chunk in layers.chunks(n_slots) {
                for (j, &il) in chunk.iter().enumerate() {
                    place[il] = Some((groups.len(), j));
                }
                groups.push(KvGroup { kind, layers: chunk.to_vec() });
            }
        }
        KvLayout { groups, n_slots, place }
    }

    fn one_group(g: &Graph, kind: KvKind) -> KvLayout {
        let layers: Vec<usize> = g.layers.iter().enumerate().filter(|(_, l)| l.is_some()).map(|(il, _)| il).collect();
        let place = g.layers.iter().enumerate().map(|(il, l)| l.map(|_| (0, il))).collect();
        KvLayout { groups: vec![KvGroup { kind, layers }], n_slots: g.layers.len(), place }
    }

    /// Whether this layout was made for `g`: every layer with an attention op, and only those,
    /// has a place. The executor refuses another graph's layout with this message.
    pub fn check(&self, g: &Graph) -> Result<(), String> {
        if self.place.len() != g.layers.len() || self.place.iter().zip(&g.layers).any(|(p, l)| p.is_some() != l.is_some()) {
            return Err(format!("a KV layout of {} layers does not fit a graph of {} layers", self.place.len(), g.layers.len()));
        }
        Ok(())
    }

    pub fn groups(&self) -> &[KvGroup] {
        &self.groups
    }

    pub fn n_groups(&self) -> usize {
        self.groups.len()
    }

    /// Each group's kind, in group order (what the engine's block manager needs).
    pub fn kinds(&self) -> Vec<KvKind> {
        self.groups.iter().map(|g| g.kind).collect()
    }

    /// Layers' K/V held by one block (the layer planes of the KV cache).
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Layers with an attention op.
    pub fn n_kv_layers(&self) -> usize {
        self.place.iter().flatten().count()
    }

    /// (group, slot) of `layer`'s K/V; None if it has no attention op.
    pub fn place(&self, layer: usize) -> Option<(usize, usize)> {
        self.place.get(layer).copied().flatten()
    }

    /// A one-line summary for logs: "6 groups of 3 layers: 1 full, 5 sliding window 512".
    pub fn describe(&self) -> String {
        let mut counts: Vec<(KvKind, usize)> = Vec::new();
        for g in &self.groups {
            match counts.iter_mut().find(|c| c.0 == g.kind) {
                Some(c) => c.1 += 1,
                None => counts.push((g.kind, 1)),
            }
        }
        let kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let per = if self.groups.len() == 1 { self.n_kv_layers() } else { self.n_slots };
        format!("{} group{} of {per} layers: {}", self.groups.len(), if self.groups.len() == 1 { "" } else { "s" }, kinds.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::LayerKv;

    fn graph(kinds: &[Option<KvKind>]) -> Graph {
        Graph {
            layers: kinds
                .iter()
                .map(|k| k.map(|kind| LayerKv { n_head_kv: 1, head_dim_k: 4, head_dim_v: 4, kind, v_in_k: false }))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn gemma3_270m_pattern_makes_six_groups_of_three() {
        // Every 6th layer global, as the Gemma plugin records Gemma 3.
        let kinds: Vec<Option<KvKind>> = (0..18).map(|il| Some(if il % 6 == 5 { KvKind::Full } else { KvKind::Sliding(512) })).collect();
        let l = KvLayout::by_kind(&graph(&kinds));
        assert_eq!(l.n_slots(), 3);
        assert_eq!(l.n_groups(), 6);
        assert_eq!(l.groups()[0], KvGroup { kind: KvKind::Full, layers: vec![5, 11, 17] });
        assert_eq!(l.groups()[2], KvGroup { kind: KvKind::Sliding(512), layers: vec![3, 4, 6] });
        assert_eq!(l.place(6), Some((2, 2)));
        assert_eq!(l.place(17), Some((0, 2)));
        assert_eq!(l.describe(), "6 groups of 3 layers: 1 full, 5 sliding window 512");
        // Every layer has exactly one (group, slot), and no two layers share one.
        let mut seen: Vec<(usize, usize)> = (0..18).map(|il| l.place(il).unwrap()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 18);
        assert!(seen.iter().all(|&(g, s)| g < 6 && s < 3));
    }

    #[test]
    fn uneven_kinds_leave_a_smaller_last_group() {
        // Gemma 3 1B: 26 layers, 4 global, 22 local: groups of 4, the last local group has 2.
        let kinds: Vec<Option<KvKind>> = (0..26).map(|il| Some(if il % 6 == 5 { KvKind::Full } else { KvKind::Sliding(512) })).collect();
        let l = KvLayout::by_kind(&graph(&kinds));
        assert_eq!((l.n_slots(), l.n_groups()), (4, 7));
        assert_eq!(l.groups()[6].layers.len(), 2);
        assert_eq!(l.n_kv_layers(), 26);
    }

    #[test]
    fn one_kind_is_one_group_with_the_layer_index_as_slot() {
        let full = graph(&[Some(KvKind::Full), None, Some(KvKind::Full)]);
        let l = KvLayout::by_kind(&full);
        assert_eq!(l, KvLayout::single(&full));
        assert_eq!((l.n_groups(), l.n_slots(), l.place(2), l.place(1)), (1, 3, Some((0, 2)), None));
        let mistral = graph(&[Some(KvKind::Sliding(4096)); 4]);
        let l = KvLayout::by_kind(&mistral);
        assert_eq!((l.kinds(), l.n_slots(), l.place(3)), (vec![KvKind::Sliding(4096)], 4, Some((0, 3))));
        assert_eq!(KvLayout::single(&mistral).kinds(), vec![KvKind::Full], "single never frees");
    }
}
