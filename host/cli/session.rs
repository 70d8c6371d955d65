//! What `run`, `generate`, `bench` and `embed` share: load a model into the engine and stream a
//! request's text to the terminal. All generation goes through `rocmforge_engine::Engine`, the
//! same path the HTTP server uses (chat turns reuse the previous turn's KV through its prefix
//! cache).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use rocmforge_engine::{Engine, EngineConfig, Event, Finished, LoadOptions, Model, Request, RequestMetrics};
use rocmforge_runtime::Registry;

/// Load `path` and start an engine on it.
pub fn start(path: &Path, registry: &Registry, opts: &LoadOptions, cfg: EngineConfig) -> Result<Engine> {
    let model = Model::load(path, registry, opts)?;
    Ok(Engine::start(model, cfg)?)
}

/// [`start`] for the text-generating verbs (`run`, `generate`, `bench`): an embedding model is
/// refused with a pointer to `embed`.
pub fn start_generator(path: &Path, registry: &Registry, opts: &LoadOptions, cfg: EngineConfig) -> Result<Engine> {
    let model = Model::load(path, registry, opts)?;
    if model.is_embedding() {
        bail!("{} is an embedding model ({}): use `rocmforge embed`, it does not generate text", path.display(), model.arch());
    }
    Ok(Engine::start(model, cfg)?)
}

/// Ollama's `--verbose` block.
pub fn print_verbose(m: &RequestMetrics, load: Duration) {
    let rate = |n: usize, d: Duration| if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 };
    eprintln!("total duration:       {:?}", m.total_time);
    eprintln!("load duration:        {:?}", load);
    eprintln!("prompt eval count:    {} token(s)", m.prompt_eval_tokens());
    eprintln!("prompt eval duration: {:?}", m.prompt_time);
    eprintln!("prompt eval rate:     {:.2} tokens/s", rate(m.prompt_eval_tokens(), m.prompt_time));
    eprintln!("eval count:           {} token(s)", m.completion_tokens);
    eprintln!("eval duration:        {:?}", m.decode_time);
    eprintln!("eval rate:            {:.2} tokens/s", rate(m.completion_tokens.saturating_sub(1), m.decode_time));
}

/// Submit `req` and write its text to stdout as it streams; returns the text and how it ended.
pub fn stream_to_stdout(engine: &Engine, req: Request) -> Result<(String, Finished)> {
    let mut stream = engine.submit(req)?;
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            Event::Delta { text: t, .. } => {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
                text.push_str(&t);
            }
            Event::Done(f) => {
                if let Some(e) = &f.error {
                    bail!("{e}");
                }
                return Ok((text, f));
            }
        }
    }
    bail!("the engine stopped before the request ended")
}
