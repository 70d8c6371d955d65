//! `rocmforge plugins` (list, in precedence order, with conflicts) and `rocmforge plugins check
//! FILE.so` (load one plugin, report its ABI and claims, conflicts with the installed plugins,
//! and build + run its graph on a tiny model). The checks live in rocmforge_runtime::plugin_check;
//! this file only prints.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Subcommand;
use rocmforge_runtime::plugin::search_path;
use rocmforge_runtime::plugin_check;
use rocmforge_runtime::Registry;

#[derive(Subcommand)]
pub enum PluginsCmd {
    /// Load one plugin file and check it: ABI version, claimed architectures, conflicts with the
    /// installed plugins, and its graph built and run on a tiny model (synthetic LLaMA-shaped
    /// metadata for each GGUF architecture it claims, or --model).
    Check {
        file: PathBuf,
        /// A real tiny model (GGUF file or HF directory) instead of the synthetic one.
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

/// `rocmforge plugins`: every plugin in precedence order, conflicts, shadowed and failed files.
pub fn list(reg: &Registry) {
    let dirs: Vec<String> = search_path().iter().map(|p| p.display().to_string()).collect();
    if reg.plugins.is_empty() {
        println!("no plugins found; searched: {}", dirs.join(", "));
    }
    // Rank = precedence: the first plugin claiming an architecture serves it.
    for (rank, p) in reg.plugins.iter().enumerate() {
        let gguf: Vec<&str> = p.gguf_archs().collect();
        let hf: Vec<&str> = p.hf_archs().collect();
        println!(
            "{:>2}. {:<14} {:<8} gguf: {:<24} hf: {:<30} {}",
            rank + 1,
            p.name,
            p.version,
            gguf.join(", "),
            hf.join(", "),
            p.path.display()
        );
    }
    let conflicts = reg.conflicts();
    if !conflicts.is_empty() {
        println!("\nconflicts (the first plugin in search order serves the architecture):");
        for c in &conflicts {
            let names: Vec<&str> = c.claimants.iter().map(|&i| reg.plugins[i].name.as_str()).collect();
            println!(
                "  {} '{}': served by '{}'; also claimed by {}",
                if c.hf { "hf" } else { "gguf" },
                c.arch,
                names[0],
                names[1..].iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
            );
        }
    }
    for s in &reg.shadowed {
        println!("SHADOWED   {}: plugin '{}' is already loaded from {}", s.path.display(), s.name, s.by.display());
    }
    for f in &reg.failures {
        println!("FAILED     {}: {}", f.path.display(), f.error);
    }
    if !reg.plugins.is_empty() {
        println!("\nsearch order: {}", dirs.join(", "));
    }
}

/// `rocmforge plugins check FILE`: prints the report; an error when a check fails.
pub fn check(file: &Path, model: Option<&Path>) -> Result<()> {
    if !file.exists() {
        bail!("{}: no such file", file.display());
    }
    let installed = Registry::discover();
    let r = plugin_check::check(file, &installed, model)?;
    let p = &r.plugin;
    println!("plugin     {} {} ({})", p.name, p.version, p.path.display());
    println!(
        "ABI        version {} (host speaks {}), plugin table of {} bytes{}",
        p.abi_version,
        plugin_check::HOST_ABI_VERSION,
        p.table_size,
        if p.meta_claims.is_empty() { "" } else { ", with conditional claims" }
    );
    for (g, h) in &p.archs {
        println!("claims     gguf: {:<20} hf: {}", if g.is_empty() { "-" } else { g }, if h.is_empty() { "-" } else { h });
    }
    for (a, key) in &p.meta_claims {
        println!("claims     gguf: {a} when metadata '{key}' is set (ahead of plain claims)");
    }
    println!("tables     {} tensor-map rows, {} config-map rows", p.tensors.len(), p.config.len());
    if let Some(by) = &r.shadowed_by {
        println!("WARNING    another plugin named '{}' is loaded first from {}: this file is not used", p.name, by.display());
    }
    for c in &r.conflicts {
        let others: Vec<String> = c.others.iter().map(|(n, path)| format!("'{n}' ({})", path.display())).collect();
        let verdict = match c.wins {
            Some(true) => "this plugin serves it (it comes first in search order)".to_string(),
            Some(false) => "the other plugin serves it (it comes first in search order)".to_string(),
            None => {
                "this file is not on the search path; put its directory in ROCMFORGE_PLUGINS to serve it ahead of the others".to_string()
            }
        };
        println!("conflict   {} '{}' also claimed by {}: {verdict}", if c.hf { "hf" } else { "gguf" }, c.arch, others.join(", "));
    }
    for b in &r.builds {
        match &b.result {
            Ok(s) => println!(
                "build      {} on {} model: OK, {} nodes ({} weights), {} attention layers, {} output columns ({}), forward pass finite",
                b.arch,
                b.model,
                s.nodes,
                s.weights,
                s.layers,
                s.output_cols,
                if s.embedding { "embeddings" } else { "logits" }
            ),
            Err(e) => println!("build      {} on {} model: FAILED: {e}", if b.arch.is_empty() { "?" } else { &b.arch }, b.model),
        }
    }
    if !r.ok() {
        bail!("plugin check failed for {}", file.display());
    }
    println!("OK         {} passes `rocmforge plugins check`", file.display());
    Ok(())
}
