//! The Gemma plugin end to end on the real Gemma-3-270M (Q4_K_M, gemma3 architecture: sliding-window
//! and global layers, per-head q/k norms, two RoPE bases, GeGLU, scaled embeddings) against
//! llama.cpp, bit for bit.
//!
//! References (llama-cpp-python 0.3.36, CPU, n_threads=2; each command is recorded inside its
//! fixture):
//! - `tests/fixtures/gemma3-270m-q4_k_m.greedy.json`: 5 prompts, 64 greedy tokens each, decoded
//!   token by token, llama.cpp's top-16 logits at every position; made by
//!   `/work/venv/bin/python scripts/fixtures/llama_cpp_greedy.py .cache/models/gemma-3-270m-q4_k_m.gguf tests/fixtures/gemma3-270m-q4_k_m.greedy.json 64`.
//! - `tests/fixtures/gemma3-270m-q4_k_m.batch.json`: the same 5 token sequences (prompt +
//!   generated) each evaluated as ONE batch: top-16 logits at every position, and for the first
//!   sequence (69 tokens) llama.cpp's intermediate tensors (eval callback) of layers 0, 5 (the first
//!   global layer) and 17 at rows 1 and 68, exact bits; made by `scripts/fixtures/llama_cpp_dump.py`
//!   (command inside).
//! - `tests/fixtures/gemma3-270m-q4_k_m.long.json`: one 700-token sequence (context 1024, batches
//!   of 512, so the sliding window of 512 drops keys), top-16 logits from position 500 on; made by
//!   `scripts/fixtures/llama_cpp_dump.py` in long mode (command inside).
//!
//! Measured: greedy decoding gives llama.cpp's 320/320 tokens with logits equal to the bit at all
//! 391 positions; one-batch logits equal llama.cpp's one-batch logits to the bit at all 391
//! positions; the 700-token sequence's logits equal to the bit at all 200 positions compared;
//! every compared intermediate is bit-identical.
//!
//! Why two logit fixtures: llama.cpp's logits depend on the batch shape (from 8 rows on its
//! matmuls use other kernels, which round differently, and 8-bit activations amplify each ulp), so
//! its one-batch logits differ from its own token-by-token ones (measured: median 0.30, max 0.91
//! at the top-16 ids of the 79-token case 2, the prompt part equal). An earlier version of this
//! test compared our one-batch logits with the token-by-token fixture and read that gap (median
//! 0.34, max 1.57, argmax 388/391) as an error of the Gemma graph; the node-by-node dump showed
//! there was none.

mod common;

use common::{argmax, load_fixture, model, registry, repo, Runner};

const FIXTURE: &str = "gemma3-270m-q4_k_m.greedy.json";
const BATCH_FIXTURE: &str = "gemma3-270m-q4_k_m.batch.json";
const LONG_FIXTURE: &str = "gemma3-270m-q4_k_m.long.json";
const MODEL: &str = "gemma-3-270m-q4_k_m.gguf";

/// Our node -> llama.cpp's node (the last tensor llama.cpp's graph gives that name: `Qcur-0` is
/// the roped Q before the attention scale), in graph order, so the first mismatch is the first op
/// that differs.
const NODE_MAP: [(&str, &str); 14] = [
    ("blk.0.attn_norm", "attn_norm-0"),
    ("blk.0.attn_q_rope", "Qcur-0"),
    ("blk.0.attn_k_rope", "Kcur-0"),
    ("blk.0.attn_v", "Vcur-0"),
    ("blk.0.attn", "kqv_out-0"),
    ("blk.0.attn_post_norm", "attn_post_norm-0"),
    ("blk.0.sa_out", "sa_out-0"),
    ("blk.0.ffn_act", "ffn_geglu-0"),
    ("blk.0.ffn_down", "ffn_out-0"),
    ("blk.0.l_out", "l_out-0"),
    ("blk.5.attn", "kqv_out-5"),
    ("blk.5.l_out", "l_out-5"),
    ("blk.17.l_out", "l_out-17"),
    ("result_norm", "result_norm"),
];

fn batch_fixture() -> serde_json::Value {
    let p = repo().join("tests/fixtures").join(BATCH_FIXTURE);
    serde_json::from_slice(&std::fs::read(&p).expect("batch fixture")).expect("json")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn top(v: &serde_json::Value) -> Vec<Vec<(u32, f32)>> {
    let pair = |e: &serde_json::Value| (e[0].as_u64().expect("id") as u32, e[1].as_f64().expect("logit") as f32);
    v.as_array().expect("top_logits").iter().map(|row| row.as_array().expect("row").iter().map(pair).collect()).collect()
}

/// Positions where every one of llama.cpp's top-16 logits equals ours bit for bit, and the largest
/// difference seen.
fn compare(rows: &[Vec<f32>], want: &[Vec<(u32, f32)>]) -> (usize, f32) {
    let mut equal = 0;
    let mut max = 0f32;
    for (row, want) in rows.iter().zip(want) {
        equal += usize::from(want.iter().all(|&(id, v)| row[id as usize].to_bits() == v.to_bits()));
        max = want.iter().map(|&(id, v)| (row[id as usize] - v).abs()).fold(max, f32::max);
    }
    (equal, max)
}

/// Greedy decoding token by token, as llama.cpp made the fixture: every token equal (no near-tie
/// allowance) and the logits equal to the bit at every position.
#[test]
fn gemma3_270m_greedy_matches_llama_cpp() {
    let cases = load_fixture(FIXTURE);
    let mut r = Runner::load(&model(MODEL), 512);
    let (mut tokens, mut positions, mut equal, mut max) = (0usize, 0usize, 0usize, 0f32);
    for (ci, c) in cases.iter().enumerate() {
        r.reset();
        let mut rows: Vec<Vec<f32>> = r.feed(&c.prompt_tokens, true).chunks(r.n_vocab).map(<[f32]>::to_vec).collect();
        for (i, &want) in c.generated.iter().enumerate() {
            let t = argmax(rows.last().expect("row"));
            assert_eq!(t, want, "case {ci}: token {i} is {t}, llama.cpp's is {want}");
            tokens += 1;
            if i + 1 < c.generated.len() {
                rows.push(r.feed(&[want], false));
            }
        }
        let (e, m) = compare(&rows, &c.top_logits);
        positions += rows.len();
        equal += e;
        max = max.max(m);
    }
    eprintln!("{MODEL} token by token: {tokens} greedy tokens equal to llama.cpp's; logits bit-identical at {equal}/{positions} positions (max |diff| {max})");
    assert_eq!(equal, positions, "logits differ from llama.cpp's (max |diff| {max})");
}

/// Each sequence (prompt + generated) in one batch: logits equal to llama.cpp's one-batch logits
/// to the bit at every position.
#[test]
fn gemma3_270m_batch_logits_match_llama_cpp() {
    let j = batch_fixture();
    let cases = j["batch_cases"].as_array().expect("batch_cases");
    assert_eq!(cases.len(), 5, "fixture cases");
    let mut r = Runner::load(&model(MODEL), 512);
    let (mut positions, mut equal, mut max) = (0usize, 0usize, 0f32);
    for c in cases {
        r.reset();
        let toks = ids(&c["tokens"]);
        let want = top(&c["top_logits"]);
        assert_eq!(toks.len(), want.len(), "fixture positions");
        let rows: Vec<Vec<f32>> = r.feed(&toks, true).chunks(r.n_vocab).map(<[f32]>::to_vec).collect();
        let (e, m) = compare(&rows, &want);
        positions += rows.len();
        equal += e;
        max = max.max(m);
    }
    eprintln!("{MODEL} one batch per sequence: logits bit-identical to llama.cpp's at {equal}/{positions} positions (max |diff| {max})");
    assert_eq!(equal, positions, "one-batch logits differ from llama.cpp's (max |diff| {max})");
}

/// A 700-token sequence (context 1024) run in batches of 512 as llama-cpp-python's `eval` runs it:
/// past position 512 the local layers' sliding window (512) drops keys, so this checks the window
/// edge and the batch split; logits from position 500 on equal llama.cpp's to the bit.
#[test]
fn gemma3_270m_long_sequence_matches_llama_cpp() {
    let p = repo().join("tests/fixtures").join(LONG_FIXTURE);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("long fixture")).expect("json");
    let c = &j["batch_cases"][0];
    let toks = ids(&c["tokens"]);
    let from = c["top_from"].as_u64().expect("top_from") as usize;
    let want = top(&c["top_logits"]);
    let n_ctx = j["n_ctx"].as_u64().expect("n_ctx") as usize;
    let n_batch = j["n_batch"].as_u64().expect("n_batch") as usize;
    assert_eq!(toks.len() - from, want.len(), "fixture positions");
    assert!(toks.len() > 512 + 64, "the sequence must pass the sliding window");
    let mut r = Runner::load(&model(MODEL), n_ctx);
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for chunk in toks.chunks(n_batch) {
        rows.extend(r.feed(chunk, true).chunks(r.n_vocab).map(<[f32]>::to_vec));
    }
    let (equal, max) = compare(&rows[from..], &want);
    eprintln!("{MODEL} {} tokens in batches of {n_batch}: logits bit-identical to llama.cpp's at {equal}/{} positions from {from} (max |diff| {max})", toks.len(), want.len());
    assert_eq!(equal, want.len(), "logits past the sliding window differ from llama.cpp's (max |diff| {max})");
}

/// The 700-token sequence with the KV cache in groups by kind (`KvLayout::by_kind`: one group of
/// the 3 global layers, five of 3 local layers each, one block table per group):
/// - in llama.cpp's batches of 512, logits from position 500 on still equal llama.cpp's to the bit
///   (the layout moves K/V, never changes arithmetic);
/// - in batches of 64, with every local group's block wholly behind the window of a batch's first
///   token given back before the batch (`NULL_BLOCK` in its table, which the CPU backend refuses
///   to read), logits at every position equal, bit for bit, those of the one-table layout that
///   keeps every block.
#[test]
fn gemma3_270m_long_sequence_in_kv_groups_with_given_back_blocks() {
    use rocmforge_runtime::exec::{Device, Executor, KvCacheType, KvConfig, Logits, SeqChunk};
    use rocmforge_runtime::{build_graph, KvKind, KvLayout, ModelSource, NULL_BLOCK};

    let p = repo().join("tests/fixtures").join(LONG_FIXTURE);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("long fixture")).expect("json");
    let c = &j["batch_cases"][0];
    let toks = ids(&c["tokens"]);
    let from = c["top_from"].as_u64().expect("top_from") as usize;
    let want = top(&c["top_logits"]);
    let n_ctx = j["n_ctx"].as_u64().expect("n_ctx") as usize;
    let n_batch = j["n_batch"].as_u64().expect("n_batch") as usize;

    let reg = registry();
    let src = ModelSource::open(&model(MODEL), &reg).expect("open model");
    let graph = build_graph(reg.for_source(&src).expect("plugin"), &src).expect("graph");
    let layout = KvLayout::by_kind(&graph);
    assert_eq!(layout.describe(), "6 groups of 3 layers: 1 full, 5 sliding window 512");
    let per_group = n_ctx.div_ceil(16);
    let n_blocks = per_group * layout.n_groups();
    let kinds = layout.kinds();
    let mut exec = Executor::with_kv_layout(graph, &src, KvConfig { block_size: 16, n_blocks }, layout, KvCacheType::F16, 512, Device::Cpu)
        .expect("executor");
    let n_vocab = exec.n_out_cols();
    // Run the sequence in batches of `batch`; with `give_back`, local groups' blocks behind the
    // window of each batch's first token are NULL_BLOCK. All logits rows.
    let mut run = |batch: usize, give_back: bool| -> Vec<Vec<f32>> {
        let mut tables: Vec<Vec<u32>> =
            (0..kinds.len()).map(|g| ((g * per_group) as u32..((g + 1) * per_group) as u32).collect()).collect();
        let mut rows = Vec::new();
        let mut pos = 0;
        for chunk in toks.chunks(batch) {
            if give_back {
                for (t, kind) in tables.iter_mut().zip(&kinds) {
                    if let KvKind::Sliding(w) = kind {
                        t[..(pos + 1usize).saturating_sub(*w) / 16].fill(NULL_BLOCK);
                    }
                }
            }
            let c = SeqChunk { tokens: chunk, pos_start: pos, block_table: &tables[0], group_tables: &tables[1..], logits: Logits::All };
            let out = exec.forward(std::slice::from_ref(&c)).expect("forward");
            rows.extend(out.chunks(n_vocab).map(<[f32]>::to_vec));
            pos += chunk.len();
        }
        rows
    };
    let rows = run(n_batch, false);
    let (equal, max) = compare(&rows[from..], &want);
    eprintln!(
        "{MODEL} in KV groups, batches of {n_batch}: bit-identical to llama.cpp at {equal}/{} positions (max |diff| {max})",
        want.len()
    );
    assert_eq!(equal, want.len(), "grouped KV layout changed the logits (max |diff| {max})");

    let grouped = run(64, true);
    // A chunk with one table for six groups is refused before anything runs.
    let t0: Vec<u32> = (0..per_group as u32).collect();
    let bad = SeqChunk { tokens: &toks[..4], pos_start: 0, block_table: &t0, group_tables: &[], logits: Logits::Last };
    let e = exec.forward(&[bad]).unwrap_err().to_string();
    assert!(e.contains("1 block tables for a KV cache of 6 groups"), "{e}");
    let mut r = Runner::load(&model(MODEL), n_ctx);
    let mut single = Vec::new();
    for chunk in toks.chunks(64) {
        single.extend(r.feed(chunk, true).chunks(n_vocab).map(<[f32]>::to_vec));
    }
    let same = grouped.iter().zip(&single).filter(|(a, b)| a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits())).count();
    eprintln!(
        "{MODEL} batches of 64, local blocks behind the window given back: {same}/{} positions bit-identical to one table",
        toks.len()
    );
    assert_eq!(same, toks.len());
}

/// The first sequence in one batch with the executor's dump on: each intermediate in `NODE_MAP`
/// (rows 1 and 68) equals llama.cpp's to the bit; on failure the message names the first op
/// that differs, which is where to look.
#[test]
fn gemma3_270m_intermediates_match_llama_cpp() {
    let j = batch_fixture();
    let toks = ids(&j["batch_cases"][0]["tokens"]);
    let row_ids: Vec<usize> =
        j["layers"]["row_ids"].as_array().expect("row_ids").iter().map(|v| v.as_u64().expect("row") as usize).collect();
    let dir = std::env::temp_dir().join(format!("rf-gemma-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut r = Runner::load(&model(MODEL), 512);
    let only: Vec<&str> = NODE_MAP.iter().map(|(ours, _)| *ours).collect();
    r.exec.set_dump(Some(dir.clone()), &only).expect("dump dir");
    r.feed(&toks, true);
    r.exec.set_dump(None, &[]).expect("dump off");

    // index.tsv: call, node, name, op, rows, cols, file.
    let index = std::fs::read_to_string(dir.join("index.tsv")).expect("index.tsv");
    let files: std::collections::HashMap<&str, (usize, usize, &str)> = index
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[2], (f[4].parse().expect("rows"), f[5].parse().expect("cols"), f[6]))
        })
        .collect();
    let mut report = Vec::new();
    let mut first_bad = None;
    for (ours, theirs) in NODE_MAP {
        let node = &j["layers"]["nodes"][theirs];
        let cols = node["cols"].as_u64().unwrap_or_else(|| panic!("fixture lacks {theirs}")) as usize;
        let &(rows, our_cols, file) = files.get(ours).unwrap_or_else(|| panic!("no dump of {ours}"));
        assert_eq!((rows, our_cols), (toks.len(), cols), "{ours} vs {theirs}: shape");
        let bytes = std::fs::read(dir.join(file)).expect("dump file");
        let data: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let (mut differ, mut max) = (0usize, 0f32);
        for (k, &row) in row_ids.iter().enumerate() {
            let hex = node["rows_f32_hex"][k].as_str().expect("hex row");
            assert_eq!(hex.len(), cols * 8, "{theirs}: hex row length");
            for (c, &v) in data[row * cols..(row + 1) * cols].iter().enumerate() {
                let want = f32::from_bits(u32::from_str_radix(&hex[c * 8..c * 8 + 8], 16).expect("hex"));
                if v.to_bits() != want.to_bits() {
                    differ += 1;
                    max = max.max((v - want).abs());
                }
            }
        }
        report.push(format!("{ours} ({theirs}): {differ} of {} values differ, max |diff| {max}", cols * row_ids.len()));
        if differ > 0 && first_bad.is_none() {
            first_bad = Some(ours);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{}", report.join("\n"));
    assert!(first_bad.is_none(), "first op that differs from llama.cpp: {}\n{}", first_bad.unwrap_or(""), report.join("\n"));
}

/// The plugin registers and claims the Gemma architectures, GGUF and Hugging Face names.
#[test]
fn gemma_plugin_claims_its_architectures() {
    let reg = registry();
    for a in ["gemma", "gemma2", "gemma3"] {
        let p = reg.for_gguf_arch(a).unwrap_or_else(|e| panic!("GGUF architecture {a}: {e}"));
        assert_eq!(p.name, "gemma");
    }
    for (hf, gguf) in [("GemmaForCausalLM", "gemma"), ("Gemma2ForCausalLM", "gemma2"), ("Gemma3ForCausalLM", "gemma3")] {
        let (_, arch) = reg.for_hf_arch(hf).unwrap_or_else(|e| panic!("{hf}: {e}"));
        assert_eq!(arch, gguf);
    }
}

/// Development aid: with `ROCMFORGE_DUMP=DIR ROCMFORGE_TOKENS=2,818,...` (optional
/// `ROCMFORGE_N_CTX`, default 512), run those tokens in batches of 512 (all logits), as
/// llama-cpp-python's `eval` does, so the executor dumps every node, for comparison with
/// `scripts/fixtures/llama_cpp_dump.py MODEL DIR --tokens 2,818,... [--n-ctx N]`.
#[test]
#[ignore]
fn gemma3_270m_dump() {
    let toks: Vec<u32> =
        std::env::var("ROCMFORGE_TOKENS").expect("ROCMFORGE_TOKENS").split(',').map(|t| t.trim().parse().expect("token id")).collect();
    let n_ctx = std::env::var("ROCMFORGE_N_CTX").map(|v| v.parse().expect("n_ctx")).unwrap_or(512);
    let mut r = Runner::load(&model(MODEL), n_ctx);
    for chunk in toks.chunks(512) {
        r.feed(chunk, true);
    }
}
