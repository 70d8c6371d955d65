//! `rocmforge pull NAME`: the server's `/api/pull` progress drawn as the `ollama` CLI draws it,
//! one bar per blob (indicatif), status lines in between:
//!
//! ```text
//! pulling manifest
//! pulling 6a0746a1ec1a: 100% [████████████████████] 2.0 GB/2.0 GB 35 MB/s
//! verifying sha256 digest
//! writing manifest
//! success
//! ```
//!
//! When stderr is not a terminal, bars are not drawn: each status and each finished blob is one
//! plain line (logs and CI stay readable).

use std::collections::HashMap;
use std::io::IsTerminal;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value as Json;

pub struct PullView {
    tty: bool,
    mp: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    /// Digests printed as finished (plain mode).
    done: Vec<String>,
    last_status: String,
}

impl Default for PullView {
    fn default() -> Self {
        Self::new()
    }
}

impl PullView {
    pub fn new() -> PullView {
        let tty = std::io::stderr().is_terminal();
        let mp = MultiProgress::with_draw_target(if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        PullView { tty, mp, bars: HashMap::new(), done: Vec::new(), last_status: String::new() }
    }

    fn bar_style() -> ProgressStyle {
        ProgressStyle::with_template("{prefix}: {percent:>3}% [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉▊▋▌▍▎▏ ")
    }

    /// One line of `/api/pull`'s NDJSON.
    pub fn update(&mut self, v: &Json) {
        let status = v["status"].as_str().unwrap_or("").to_string();
        let digest = v["digest"].as_str().unwrap_or("").to_string();
        let total = v["total"].as_u64().unwrap_or(0);
        let completed = v["completed"].as_u64().unwrap_or(0);
        if !digest.is_empty() && total > 0 {
            if !self.tty {
                if completed >= total && !self.done.contains(&digest) {
                    eprintln!("{status}: 100% {}", human(total));
                    self.done.push(digest);
                }
                return;
            }
            let mp = &self.mp;
            let bar = self.bars.entry(digest).or_insert_with(|| {
                let b = mp.add(ProgressBar::new(total));
                b.set_style(Self::bar_style());
                b.set_prefix(status.clone());
                b
            });
            bar.set_length(total);
            bar.set_position(completed);
            if completed >= total && !bar.is_finished() {
                bar.finish();
            }
            return;
        }
        if status.is_empty() || status == self.last_status {
            return;
        }
        self.last_status = status.clone();
        if self.tty {
            // A finished one-line bar keeps the status in order below the blobs' bars.
            let s = self.mp.add(ProgressBar::new_spinner());
            s.set_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            s.finish_with_message(status);
        } else {
            eprintln!("{status}");
        }
    }

    /// Leave the bars as they are on screen (an interrupted pull shows where it stopped).
    pub fn finish(self) -> Result<()> {
        for b in self.bars.values() {
            if !b.is_finished() {
                b.abandon();
            }
        }
        Ok(())
    }
}

fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
