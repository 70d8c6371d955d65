//! `rocmforge run`: chat in the terminal like `ollama run` — streaming output, the model's chat
//! template, multi-line input between `"""` markers, `/bye` to leave, `/clear` to forget — or a
//! one-shot answer when a prompt is given on the command line (or piped on stdin).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use rocmforge_chat::{ChatMessage, RenderRequest};
use rocmforge_engine::{Engine, PromptBuilder, Request};

use super::session::{print_verbose, stream_to_stdout};

/// One assistant turn: stream the reply to stdout, return its text. `base` carries the sampling
/// options, limits and the user's stop strings; the template's stop strings are added here.
fn turn(engine: &Engine, messages: &[ChatMessage], base: &Request, verbose: bool) -> Result<String> {
    let model = engine.model();
    let prompt = PromptBuilder::new(model).chat(&RenderRequest::new(messages))?;
    let mut req = base.clone();
    req.prompt = prompt;
    req.skip_special = true;
    for s in model.template_stops() {
        if !req.stop.contains(s) {
            req.stop.push(s.clone());
        }
    }
    let (reply, fin) = stream_to_stdout(engine, req)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out);
    if verbose {
        print_verbose(&fin.metrics, model.load_time());
    }
    Ok(reply)
}

pub fn run(engine: &Engine, prompt: Option<String>, base: &Request, verbose: bool) -> Result<()> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    let stdin = std::io::stdin();
    let prompt = match prompt {
        Some(p) => Some(p),
        None if !stdin.is_terminal() => {
            let mut buf = String::new();
            for line in stdin.lock().lines() {
                buf.push_str(&line?);
                buf.push('\n');
            }
            Some(buf.trim_end().to_string())
        }
        None => None,
    };
    if let Some(p) = prompt {
        messages.push(ChatMessage::text("user", p.as_str()));
        turn(engine, &messages, base, verbose)?;
        return Ok(());
    }
    eprintln!(
        "Chatting with {} ({}). Type /bye to exit, /clear to start over, \"\"\" for multi-line input.",
        engine.model().path().display(),
        engine.model().plugin()
    );
    let mut lines = stdin.lock().lines();
    loop {
        eprint!(">>> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let mut line = line?;
        if line.trim_start().starts_with("\"\"\"") {
            // Multi-line input until a line ending with """.
            let mut buf = line.trim_start()[3..].to_string();
            while !buf.trim_end().ends_with("\"\"\"") {
                eprint!("... ");
                let _ = std::io::stderr().flush();
                match lines.next() {
                    Some(l) => {
                        buf.push('\n');
                        buf.push_str(&l?);
                    }
                    None => break,
                }
            }
            line = buf.trim_end().trim_end_matches("\"\"\"").to_string();
        }
        match line.trim() {
            "" => continue,
            "/bye" | "/exit" => break,
            "/clear" => {
                messages.clear();
                eprintln!("Cleared session context");
                continue;
            }
            "/?" | "/help" => {
                eprintln!(
                    "Available commands:\n  /clear   Clear session context\n  /bye     Exit\n  \"\"\"      Begin/end a multi-line message"
                );
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::text("user", line.as_str()));
        match turn(engine, &messages, base, verbose) {
            Ok(reply) => messages.push(ChatMessage::text("assistant", reply.as_str())),
            Err(e) => {
                eprintln!("Error: {e:#}");
                messages.pop();
            }
        }
    }
    Ok(())
}
