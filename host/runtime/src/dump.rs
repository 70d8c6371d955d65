//! Intermediate dumps (for comparing a plugin's graph with another engine node by node): every
//! forward call `c` writes each activation node `i`'s output as raw little-endian f32, row-major
//! `[rows, cols]`, to `DIR/c{c:04}-n{i:04}-{name}.f32`, and appends one line per node to
//! `DIR/index.tsv`: `call  node  name  op  rows  cols  file` (see `exec`'s module doc).
//!
//! The same hook feeds fp8 KV scale calibration: a [`Sink::Amax`] takes in the K/V inputs of
//! the attention ops instead of writing files (`kv_scales.rs`), on any backend.

use std::path::PathBuf;

use crate::RuntimeError;

/// Where node outputs go.
pub(crate) enum Sink {
    /// Files in this directory.
    Files(PathBuf),
    /// Per-head maxima of the attention inputs (calibration).
    Amax(crate::kv_scales::AmaxProbe),
}

/// Where and for which call intermediate tensors are being dumped (see the module doc).
pub struct Dump {
    pub(crate) sink: Sink,
    pub(crate) call: usize,
    /// Node names to dump; empty = every node.
    pub(crate) only: Vec<String>,
}

impl Dump {
    fn err(dir: &std::path::Path, what: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Dump { path: dir.to_path_buf(), what: what.to_string() }
    }

    /// Write node `i` (`rows × cols` floats in `data`) and its index line.
    pub(crate) fn write(&self, i: usize, node: &crate::graph::Node, rows: usize, cols: usize, data: &[f32]) -> Result<(), RuntimeError> {
        use std::io::Write;
        let dir = match &self.sink {
            Sink::Files(dir) => dir,
            Sink::Amax(probe) => {
                probe.observe(i, cols, data);
                return Ok(());
            }
        };
        // The op's variant name, e.g. "RmsNorm", from its Debug form.
        let dbg = format!("{:?}", node.op);
        let op = dbg.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or("");
        // Node names are the plugin's ("blk.0.attn_q"); keep the file name portable.
        let safe: String = node.name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        let file = format!("c{:04}-n{i:04}-{safe}.f32", self.call);
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(&file), bytes).map_err(|e| Self::err(dir, format!("{file}: {e}")))?;
        let mut idx = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("index.tsv"))
            .map_err(|e| Self::err(dir, format!("index.tsv: {e}")))?;
        writeln!(idx, "{}\t{i}\t{}\t{op}\t{rows}\t{cols}\t{file}", self.call, node.name)
            .map_err(|e| Self::err(dir, format!("index.tsv: {e}")))
    }
}

impl Dump {
    /// Whether node `name` is dumped.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }
}
