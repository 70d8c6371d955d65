//! `rocmforge run`: chat in the terminal like `ollama run` — streaming output, the model's chat
//! template, multi-line input between `"""` markers, `/bye` to leave, `/clear` to forget — or a
//! one-shot answer when a prompt is given on the command line (or piped on stdin).

use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use anyhow::Result;
use rocmforge_chat::{ChatMessage, RenderRequest};

use super::session::{GenOptions, Session, TextOut};

fn token_text(s: &Session, id: u32) -> Option<String> {
    s.tok.token_text(id).map(str::to_string)
}

/// Render the conversation with the model's template and tokenize it (special tokens parsed,
/// BOS added only if the template did not already write it).
fn prompt_tokens(s: &Session, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let bos = s.tok.bos().and_then(|b| token_text(s, b)).unwrap_or_default();
    let eos = s.tok.eos().and_then(|e| token_text(s, e)).unwrap_or_default();
    let mut req = RenderRequest::new(messages);
    req.add_generation_prompt = true;
    req.bos_token = &bos;
    req.eos_token = &eos;
    let text = s.template.render(&req)?;
    let add_bos = s.tok.add_bos() && !(!bos.is_empty() && text.starts_with(&bos));
    let mut ids = Vec::new();
    if add_bos {
        ids.extend(s.tok.bos());
    }
    ids.extend(s.tok.encode(&text, false, true)?);
    Ok(ids)
}

/// One assistant turn: stream the reply to stdout, return its text.
fn turn(s: &mut Session, messages: &[ChatMessage], opts: &GenOptions, verbose: bool) -> Result<String> {
    let t0 = Instant::now();
    let ids = prompt_tokens(s, messages)?;
    let mut stops = opts.stop.clone();
    stops.extend(s.template_stops.as_slice().iter().cloned());
    let tok = s.tok.clone();
    let mut text = TextOut::new(&tok, true, stops);
    let (stats, reply) = {
        let mut out = std::io::stdout().lock();
        let st = s.generate(&ids, opts, |_, t| {
            let (piece, stopped) = text.push(t);
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            !stopped
        })?;
        let _ = out.write_all(text.finish().as_bytes());
        let _ = writeln!(out);
        (st, text.shown().to_string())
    };
    if verbose {
        stats.print_verbose(t0.elapsed(), s.load_time);
    }
    Ok(reply)
}

pub fn run(s: &mut Session, prompt: Option<String>, opts: &GenOptions, verbose: bool) -> Result<()> {
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
        turn(s, &messages, opts, verbose)?;
        return Ok(());
    }
    eprintln!(
        "Chatting with {} ({}). Type /bye to exit, /clear to start over, \"\"\" for multi-line input.",
        s.src.path().display(),
        s.plugin
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
                s.reset();
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
        match turn(s, &messages, opts, verbose) {
            Ok(reply) => messages.push(ChatMessage::text("assistant", reply.as_str())),
            Err(e) => {
                eprintln!("Error: {e:#}");
                messages.pop();
            }
        }
    }
    Ok(())
}
