//! The Ollama-style verbs that talk to a running `rocmforge serve` (or an Ollama server):
//! `list`, `ps`, `pull`, `rm`, `cp`, `create`, `stop`, and `chat` (what `run NAME` does for a
//! model known to the server).
//!
//! The server is `$OLLAMA_HOST` (default `127.0.0.1:11434`), as for the `ollama` CLI. A Modelfile
//! is turned into the JSON `/api/create` body here, on the client side, as Ollama's CLI does;
//! `FROM ./file.gguf` is sent as an absolute path (the server reads it from the same disk);
//! `ADAPTER` files (a GGUF adapter, or a PEFT adapter directory) are uploaded as blobs and sent
//! as `adapters`, as Ollama's CLI does.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value as Json};

/// The server's base URL from `OLLAMA_HOST`.
pub fn base_url() -> String {
    let h = std::env::var("OLLAMA_HOST").ok().filter(|h| !h.trim().is_empty()).unwrap_or_default();
    match rocmforge_server::parse_host(&h) {
        Ok(mut a) => {
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{a}")
        }
        Err(_) => "http://127.0.0.1:11434".into(),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// The error of a non-2xx answer (`{"error": ...}` in either dialect's shape).
fn check(mut r: ureq::http::Response<ureq::Body>) -> Result<ureq::http::Response<ureq::Body>> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    let msg = serde_json::from_str::<Json>(&body)
        .ok()
        .and_then(|v| v.get("error").map(|e| e.get("message").unwrap_or(e).as_str().map(str::to_string).unwrap_or_else(|| e.to_string())))
        .unwrap_or(body);
    bail!("{msg} (HTTP {})", status.as_u16())
}

fn connect_err(e: ureq::Error) -> anyhow::Error {
    anyhow!("could not reach the server at {} ({e}); start it with `rocmforge serve`", base_url())
}

fn get(path: &str) -> Result<Json> {
    let r = agent().get(format!("{}{path}", base_url())).call().map_err(connect_err)?;
    let mut r = check(r)?;
    Ok(r.body_mut().read_json()?)
}

fn post(path: &str, body: &Json) -> Result<ureq::http::Response<ureq::Body>> {
    let r = agent().post(format!("{}{path}", base_url())).send_json(body).map_err(connect_err)?;
    check(r)
}

/// Read an NDJSON progress stream, calling `f` per object; an `error` line is an error.
fn ndjson(r: ureq::http::Response<ureq::Body>, mut f: impl FnMut(&Json)) -> Result<()> {
    let reader = BufReader::new(r.into_body().into_reader());
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Json = serde_json::from_str(&line).with_context(|| format!("bad line from the server: {line}"))?;
        if let Some(e) = v.get("error") {
            bail!("{}", e.as_str().unwrap_or(&e.to_string()));
        }
        f(&v);
    }
    Ok(())
}

fn human_size(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0} KB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

fn ago(ts: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else { return ts.to_string() };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    let (n, unit) = match secs {
        s if s < 60 => return "Less than a minute ago".into(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86400 => (s / 3600, "hour"),
        s if s < 86400 * 30 => (s / 86400, "day"),
        s => (s / (86400 * 30), "month"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn until(ts: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else { return ts.to_string() };
    let secs = (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    match secs {
        s if s > 100 * 365 * 86400 => "Forever".into(),
        s if s < 60 => "Less than a minute from now".into(),
        s if s < 3600 => format!("{} minutes from now", s / 60),
        s => format!("{} hours from now", s / 3600),
    }
}

pub fn list() -> Result<()> {
    let v = get("/api/tags")?;
    println!("{:<40} {:<14} {:<10} MODIFIED", "NAME", "ID", "SIZE");
    for m in v["models"].as_array().into_iter().flatten() {
        let digest = m["digest"].as_str().unwrap_or("");
        println!(
            "{:<40} {:<14} {:<10} {}",
            m["name"].as_str().unwrap_or("?"),
            &digest[..digest.len().min(12)],
            human_size(m["size"].as_u64().unwrap_or(0)),
            ago(m["modified_at"].as_str().unwrap_or(""))
        );
    }
    Ok(())
}

pub fn ps() -> Result<()> {
    let v = get("/api/ps")?;
    println!("{:<40} {:<14} {:<10} {:<10} {:<8} UNTIL", "NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT");
    for m in v["models"].as_array().into_iter().flatten() {
        let digest = m["digest"].as_str().unwrap_or("");
        println!(
            "{:<40} {:<14} {:<10} {:<10} {:<8} {}",
            m["name"].as_str().unwrap_or("?"),
            &digest[..digest.len().min(12)],
            human_size(m["size"].as_u64().unwrap_or(0)),
            "100% CPU",
            m["context_length"].as_u64().unwrap_or(0),
            until(m["expires_at"].as_str().unwrap_or(""))
        );
    }
    Ok(())
}

/// `pull`: the server downloads; we draw its progress (`cli::pull`). `insecure` allows a plain
/// http registry, as `ollama pull --insecure`.
pub fn pull(name: &str, insecure: bool) -> Result<()> {
    let r = post("/api/pull", &json!({ "model": name, "insecure": insecure }))?;
    let mut view = crate::cli::pull::PullView::new();
    let res = ndjson(r, |v| view.update(v));
    view.finish()?;
    res
}

pub fn rm(names: &[String]) -> Result<()> {
    for n in names {
        let r =
            agent().delete(format!("{}/api/delete", base_url())).force_send_body().send_json(json!({ "model": n })).map_err(connect_err)?;
        check(r)?;
        println!("deleted '{n}'");
    }
    Ok(())
}

pub fn cp(src: &str, dst: &str) -> Result<()> {
    post("/api/copy", &json!({ "source": src, "destination": dst }))?;
    println!("copied '{src}' to '{dst}'");
    Ok(())
}

pub fn stop(name: &str) -> Result<()> {
    post("/api/generate", &json!({ "model": name, "keep_alive": 0, "stream": false }))?;
    Ok(())
}

/// A parsed Modelfile as the `/api/create` body (without `model`), and the paths of its
/// `ADAPTER` lines (uploaded by [`create`]).
pub fn parse_modelfile(text: &str, dir: &Path) -> Result<(Map<String, Json>, Vec<PathBuf>)> {
    let mut body = Map::new();
    let mut adapters = Vec::new();
    let mut params: Map<String, Json> = Map::new();
    let mut messages = Vec::new();
    let mut licenses = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let line_end = rest.find('\n').unwrap_or(rest.len());
        let line = rest[..line_end].trim();
        if line.is_empty() || line.starts_with('#') {
            rest = rest.get(line_end + 1..).unwrap_or("");
            continue;
        }
        let (cmd, arg_start) = match line.find(char::is_whitespace) {
            Some(i) => (&line[..i], i),
            None => bail!("Modelfile: {line:?} has no argument"),
        };
        // The argument may be a """ block spanning lines.
        let line_offset = rest.len() - rest.trim_start().len();
        let after_cmd = &rest[line_offset + arg_start..];
        let after_cmd_trim = after_cmd.trim_start();
        let (arg, consumed): (String, usize) = if let Some(block) = after_cmd_trim.strip_prefix("\"\"\"") {
            let end = block.find("\"\"\"").ok_or_else(|| anyhow!("Modelfile: unterminated \"\"\" after {cmd}"))?;
            let used = (rest.len() - after_cmd_trim.len()) + 3 + end + 3;
            (block[..end].to_string(), used)
        } else {
            let l = line[arg_start..].trim();
            (l.trim_matches('"').to_string(), line_end)
        };
        rest = rest.get(consumed..).unwrap_or("");
        rest = rest.strip_prefix('\n').unwrap_or(rest);
        match cmd.to_ascii_uppercase().as_str() {
            "FROM" => {
                let p = if Path::new(&arg).is_absolute() { PathBuf::from(&arg) } else { dir.join(arg.trim_start_matches("./")) };
                let is_path = arg.starts_with('.') || arg.starts_with('/') || arg.ends_with(".gguf") || p.is_file();
                let from = if is_path { std::fs::canonicalize(&p).unwrap_or(p).display().to_string() } else { arg.clone() };
                body.insert("from".into(), json!(from));
            }
            "PARAMETER" => {
                let (k, v) = arg.split_once(char::is_whitespace).ok_or_else(|| anyhow!("PARAMETER {arg:?} needs a value"))?;
                let v = v.trim().trim_matches('"');
                let val: Json = match v.parse::<i64>() {
                    Ok(i) => json!(i),
                    Err(_) => match v.parse::<f64>() {
                        Ok(f) => json!(f),
                        Err(_) => match v {
                            "true" | "false" => json!(v == "true"),
                            _ => json!(v),
                        },
                    },
                };
                if k == "stop" {
                    let e = params.entry("stop").or_insert_with(|| json!([]));
                    if let Some(a) = e.as_array_mut() {
                        a.push(json!(v));
                    }
                } else {
                    params.insert(k.to_string(), val);
                }
            }
            "TEMPLATE" => {
                body.insert("template".into(), json!(arg));
            }
            "SYSTEM" => {
                body.insert("system".into(), json!(arg));
            }
            "LICENSE" => licenses.push(json!(arg)),
            "MESSAGE" => {
                let (role, content) = arg.split_once(char::is_whitespace).ok_or_else(|| anyhow!("MESSAGE needs a role and content"))?;
                messages.push(json!({ "role": role, "content": content.trim() }));
            }
            "ADAPTER" => {
                let p = if Path::new(&arg).is_absolute() { PathBuf::from(&arg) } else { dir.join(arg.trim_start_matches("./")) };
                adapters.push(p);
            }
            other => bail!("Modelfile: unknown instruction {other}"),
        }
    }
    if !body.contains_key("from") {
        bail!("Modelfile: no FROM line");
    }
    if !params.is_empty() {
        body.insert("parameters".into(), Json::Object(params));
    }
    if !messages.is_empty() {
        body.insert("messages".into(), json!(messages));
    }
    if !licenses.is_empty() {
        body.insert("license".into(), json!(licenses));
    }
    Ok((body, adapters))
}

/// Upload a local file as a blob unless the server has it; returns its digest.
fn upload_blob(path: &Path) -> Result<String> {
    let open = || std::fs::File::open(path).with_context(|| format!("opening {}", path.display()));
    let (hex, _) = rocmforge_store::sha256_reader(BufReader::new(open()?)).with_context(|| format!("reading {}", path.display()))?;
    let digest = format!("sha256:{hex}");
    let url = format!("{}/api/blobs/{digest}", base_url());
    let r = agent().head(&url).call().map_err(connect_err)?;
    if r.status().as_u16() != 200 {
        check(agent().post(&url).send(open()?).map_err(connect_err)?)?;
    }
    Ok(digest)
}

/// The `adapters` map of `ADAPTER` paths: a file is one (GGUF) adapter; a directory is a PEFT
/// adapter (its `adapter_config.json` and `adapter_model.safetensors`).
fn upload_adapters(paths: &[PathBuf]) -> Result<Map<String, Json>> {
    let mut out = Map::new();
    for p in paths {
        if p.is_dir() {
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                let fp = p.join(f);
                if !fp.is_file() {
                    bail!(
                        "ADAPTER {}: no {f} (a PEFT adapter directory needs adapter_config.json and adapter_model.safetensors)",
                        p.display()
                    );
                }
                eprintln!("uploading {}", fp.display());
                out.insert(f.to_string(), json!(upload_blob(&fp)?));
            }
        } else {
            let name =
                p.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| anyhow!("ADAPTER {}: not a file", p.display()))?;
            eprintln!("uploading {}", p.display());
            out.insert(name, json!(upload_blob(p)?));
        }
    }
    Ok(out)
}

pub fn create(name: &str, modelfile: Option<&Path>, from: Option<&str>) -> Result<()> {
    let (mut body, adapters) = match (modelfile, from) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            parse_modelfile(&text, f.parent().unwrap_or(Path::new(".")))?
        }
        (None, Some(src)) => {
            let p = Path::new(src);
            let from = if p.exists() { std::fs::canonicalize(p)?.display().to_string() } else { src.to_string() };
            let mut m = Map::new();
            m.insert("from".into(), json!(from));
            (m, Vec::new())
        }
        (None, None) => {
            let f = Path::new("Modelfile");
            if !f.exists() {
                bail!("no Modelfile: pass -f FILE or --from GGUF");
            }
            parse_modelfile(&std::fs::read_to_string(f)?, Path::new("."))?
        }
    };
    if !adapters.is_empty() {
        body.insert("adapters".into(), Json::Object(upload_adapters(&adapters)?));
    }
    body.insert("model".into(), json!(name));
    let r = post("/api/create", &Json::Object(body))?;
    ndjson(r, |v| eprintln!("{}", v["status"].as_str().unwrap_or("")))
}

/// `run NAME [PROMPT]` through the server: one answer, or an interactive chat.
// Wired into `run` when NAME is not a file and a server answers (the `Run` arm is the lead's).
pub fn chat(name: &str, prompt: Option<String>) -> Result<()> {
    let mut history: Vec<Json> = Vec::new();
    let turn = |history: &mut Vec<Json>, text: String| -> Result<()> {
        history.push(json!({ "role": "user", "content": text }));
        let r = post("/api/chat", &json!({ "model": name, "messages": history, "stream": true }))?;
        let mut reply = String::new();
        let mut out = std::io::stdout().lock();
        ndjson(r, |v| {
            if let Some(t) = v["message"]["content"].as_str() {
                reply.push_str(t);
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
        })?;
        let _ = writeln!(out);
        history.push(json!({ "role": "assistant", "content": reply }));
        Ok(())
    };
    if let Some(p) = prompt {
        return turn(&mut history, p);
    }
    // Load first so the first answer is not slowed by it, as `ollama run` does.
    post("/api/generate", &json!({ "model": name, "stream": false }))?;
    let stdin = std::io::stdin();
    loop {
        eprint!(">>> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/bye" | "/exit" => break,
            "/clear" => {
                history.clear();
                continue;
            }
            _ => turn(&mut history, line.to_string())?,
        }
    }
    Ok(())
}

/// Whether a server answers at `base_url()` (the `ollama` CLI's HEAD / heartbeat).
pub fn server_up() -> bool {
    let a: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_millis(500)))
        .http_status_as_error(false)
        .build()
        .into();
    a.head(format!("{}/", base_url())).call().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modelfile() {
        let mf = "# comment\nFROM ./m.gguf\nPARAMETER temperature 0.2\nPARAMETER stop \"<|im_end|>\"\nPARAMETER stop x\nPARAMETER num_ctx 2048\nSYSTEM \"\"\"You are\nMario.\"\"\"\nTEMPLATE {{ .Prompt }}\nMESSAGE user hi there\nLICENSE MIT\n";
        let (b, adapters) = parse_modelfile(&format!("{mf}ADAPTER ./lora.gguf\n"), Path::new("/tmp")).unwrap();
        assert_eq!(adapters, vec![PathBuf::from("/tmp/lora.gguf")]);
        assert_eq!(b["from"], "/tmp/m.gguf");
        assert_eq!(b["parameters"]["temperature"], 0.2);
        assert_eq!(b["parameters"]["num_ctx"], 2048);
        assert_eq!(b["parameters"]["stop"], json!(["<|im_end|>", "x"]));
        assert_eq!(b["system"], "You are\nMario.");
        assert_eq!(b["template"], "{{ .Prompt }}");
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi there"}]));
        assert_eq!(b["license"], json!(["MIT"]));
        assert!(parse_modelfile("PARAMETER x 1\n", Path::new(".")).is_err());
        assert!(parse_modelfile("FROM llama3\nBOGUS x\n", Path::new(".")).is_err());
        assert_eq!(parse_modelfile("from llama3", Path::new(".")).unwrap().0["from"], "llama3");
    }
}
