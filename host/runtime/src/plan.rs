//! The memory and step plan of a graph, decided once per model and shared by every backend.
//!
//! Memory: every activation gets a column range `[off, off + cols)` chosen first-fit among the
//! ranges of nodes still alive (a node dies after its last use), so one arena of
//! `peak_cols × stride` floats holds a whole forward pass and node `i` lives at
//! `arena[off_i * stride ..][.. rows * cols_i]`, where `stride` is the batch's row count rounded
//! up to a power of two (small batches stay compact; the power-of-two strides are also the
//! natural buckets for GPU graph capture). Ranges of simultaneously live nodes never overlap,
//! which is what makes handing out one mutable output next to immutable inputs sound.
//!
//! ```text
//!  cols →     0          576        1152
//!  node 3     [ x  x  x  ]                    live 3..=5 (op 5 reads it)
//!  node 4                [ x  x  x  ]         live 4..=6
//!  node 5                            [ ... ]  cannot reuse 3's range: 3 is read by op 5
//!  node 7     [ x  x  x  ]                    reuses 3's range: 3 died after op 5
//! ```
//!
//! Steps: the nodes to compute, in order, with fusions decided here once (not per forward):
//! today sibling MATMULs of one input (Q/K/V, gate/up) whose output ranges are pairwise disjoint
//! and disjoint from the input's run as one call ([`Step::MatMulGroup`]). Weight nodes get no
//! step. Which weights an op reads element-wise (norm weights, biases, RoPE factors) is decided
//! here too, so backends can keep them as f32 vectors.

use crate::graph::{Graph, Op, RowSrc, Shape};
use crate::RuntimeError;

/// One unit of work of a forward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Node(usize),
    /// Sibling MATMULs of one input, computed in one call; the first is the group's leader.
    MatMulGroup(Vec<usize>),
}

impl Step {
    /// The nodes this step writes.
    pub fn nodes(&self) -> &[usize] {
        match self {
            Step::Node(i) => std::slice::from_ref(i),
            Step::MatMulGroup(g) => g,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// Column offset per activation node (usize::MAX for weights).
    pub col_off: Vec<usize>,
    pub peak_cols: usize,
    pub steps: Vec<Step>,
    /// Weights read element-wise (kept as f32 vectors by the backends).
    pub needs_vec: Vec<bool>,
    /// Columns of the output (the vocabulary size for logits).
    pub n_out_cols: usize,
    /// Rows of the token embedding table(s): token ids must be below this.
    pub n_token_rows: Option<usize>,
    /// The graph pools whole sequences (embedding models).
    pub pools: bool,
}

/// The node ids an op reads.
pub fn inputs_of(op: &Op) -> Vec<usize> {
    match *op {
        Op::Weight { .. } => vec![],
        Op::MoeRoute { logits, ref routing, .. } => std::iter::once(logits).chain(routing.bias).collect(),
        Op::HeadMatMul { x, w, .. } => vec![x, w],
        Op::Concat { a, b, .. } => vec![a, b],
        Op::MoeGateUp { x, route, gate, up, gate_b, up_b, .. } => [x, route, gate, up].into_iter().chain(gate_b).chain(up_b).collect(),
        Op::MoeDown { h, route, down, bias, .. } => [h, route, down].into_iter().chain(bias).collect(),
        Op::GetRows { table, .. } => vec![table],
        Op::RmsNorm { x, w, .. } => std::iter::once(x).chain(w).collect(),
        Op::LayerNorm { x, w, b, .. } => std::iter::once(x).chain(w).chain(b).collect(),
        Op::MatMul { x, w, bias } => [x, w].into_iter().chain(bias).collect(),
        Op::Add { a, b } | Op::Mul { a, b } => vec![a, b],
        Op::Rope { x, freq_factors, .. } => std::iter::once(x).chain(freq_factors).collect(),
        Op::Attention { q, k, v, ref p } => [q, k, v].into_iter().chain(p.sinks).collect(),
        Op::SwiGlu { gate, up } | Op::GeGlu { gate, up } => vec![gate, up],
        Op::Scale { x, .. }
        | Op::Silu { x }
        | Op::Sigmoid { x }
        | Op::Gelu { x }
        | Op::GeluErf { x }
        | Op::Softcap { x, .. }
        | Op::View { x, .. }
        | Op::HeadView { x, .. }
        | Op::OutputRows { x }
        | Op::Output { x }
        | Op::Pool { x, .. }
        | Op::L2Norm { x, .. } => vec![x],
    }
}

impl Plan {
    pub fn new(graph: &Graph) -> Result<Plan, RuntimeError> {
        let n = graph.nodes.len();
        let mut needs_vec = vec![false; n];
        for node in &graph.nodes {
            match node.op {
                Op::RmsNorm { w, .. } => w.into_iter().for_each(|i| needs_vec[i] = true),
                Op::LayerNorm { w, b, .. } => w.into_iter().chain(b).for_each(|i| needs_vec[i] = true),
                Op::MatMul { bias, .. } => bias.into_iter().for_each(|i| needs_vec[i] = true),
                Op::Add { b, .. } | Op::Mul { b, .. } => needs_vec[b] = true,
                Op::MoeRoute { ref routing, .. } => routing.bias.into_iter().for_each(|i| needs_vec[i] = true),
                Op::Rope { freq_factors, .. } => freq_factors.into_iter().for_each(|i| needs_vec[i] = true),
                Op::Attention { ref p, .. } => p.sinks.into_iter().for_each(|i| needs_vec[i] = true),
                Op::MoeGateUp { gate_b, up_b, .. } => gate_b.into_iter().chain(up_b).for_each(|i| needs_vec[i] = true),
                Op::MoeDown { bias, .. } => bias.into_iter().for_each(|i| needs_vec[i] = true),
                _ => {}
            }
        }

        // Lifetimes: last reader of each node; the output lives to the end.
        let mut last_use: Vec<usize> = (0..n).collect();
        for (i, node) in graph.nodes.iter().enumerate() {
            for j in inputs_of(&node.op) {
                last_use[j] = last_use[j].max(i);
            }
        }
        if let Some(o) = graph.output {
            last_use[o] = usize::MAX;
        }
        // First-fit column ranges.
        let mut col_off = vec![usize::MAX; n];
        let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (off, cols, last_use)
        let mut peak = 0usize;
        for (i, node) in graph.nodes.iter().enumerate() {
            let Shape::Act { cols, .. } = node.shape else { continue };
            live.retain(|&(_, _, lu)| lu >= i);
            live.sort_unstable();
            let mut off = 0usize;
            for &(o, c, _) in &live {
                if off + cols <= o {
                    break;
                }
                off = off.max(o + c);
            }
            col_off[i] = off;
            live.push((off, cols, last_use[i]));
            peak = peak.max(off + cols);
        }
        let n_out_cols = match graph.output.map(|o| &graph.nodes[o].shape) {
            Some(Shape::Act { cols, .. }) => *cols,
            _ => 0,
        };
        let n_token_rows = graph
            .nodes
            .iter()
            .filter_map(|nd| match nd.op {
                Op::GetRows { table, src: RowSrc::Tokens } => graph.weight_dims(table).and_then(|d| d.get(1).copied()),
                _ => None,
            })
            .min();
        let pools = graph.nodes.iter().any(|nd| matches!(nd.op, Op::Pool { .. }));
        let mut plan = Plan { col_off, peak_cols: peak, steps: Vec::new(), needs_vec, n_out_cols, n_token_rows, pools };
        let mut i = 0;
        while i < n {
            let node = &graph.nodes[i];
            if !matches!(node.shape, Shape::Act { .. }) {
                i += 1;
                continue;
            }
            let group = plan.matmul_group(graph, i);
            if group.len() > 1 {
                i = group[group.len() - 1] + 1;
                plan.steps.push(Step::MatMulGroup(group));
            } else {
                plan.steps.push(Step::Node(i));
                i += 1;
            }
        }
        Ok(plan)
    }

    /// Node `i` (a MATMUL) and the MATMULs right after it (weight nodes in between skipped) that
    /// read the same input with the same row count and the same k, when all their output column
    /// ranges are disjoint from each other and from the input's (the plan guarantees this for
    /// outputs still read later; a never-read output may share columns).
    fn matmul_group(&self, graph: &Graph, i: usize) -> Vec<usize> {
        let nodes = &graph.nodes;
        let k_of = |w: usize| graph.weight_dims(w).and_then(|d| d.first().copied());
        let (Op::MatMul { x, w, .. }, Shape::Act { rows, .. }) = (&nodes[i].op, &nodes[i].shape) else { return vec![i] };
        let k = k_of(*w);
        let mut group = vec![i];
        for (j, n) in nodes.iter().enumerate().skip(i + 1) {
            match (&n.op, &n.shape) {
                (Op::Weight { .. }, _) => {}
                (Op::MatMul { x: xj, w: wj, .. }, Shape::Act { rows: rj, .. }) if xj == x && rj == rows && k_of(*wj) == k => group.push(j),
                _ => break,
            }
        }
        let range = |j: usize| match nodes[j].shape {
            Shape::Act { cols, .. } => (self.col_off[j], self.col_off[j] + cols),
            Shape::Weight(_) => (0, 0),
        };
        let mut ranges: Vec<(usize, usize)> = group.iter().map(|&j| range(j)).collect();
        ranges.push(range(*x));
        ranges.sort_unstable();
        if ranges.windows(2).any(|r| r[0].1 > r[1].0) {
            return vec![i];
        }
        group
    }
}
