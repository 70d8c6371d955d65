//! Ollama model names: `[host/][namespace/]model[:tag]`, with the defaults
//! `registry.ollama.ai`, `library` and `latest`.
//!
//! Invariants: a parsed [`ModelName`] has four non-empty parts that match Ollama's grammar
//! (host `[A-Za-z0-9_][A-Za-z0-9_.:-]*` up to 350 bytes, namespace `[A-Za-z0-9_][A-Za-z0-9_-]*`
//! up to 80, model and tag `[A-Za-z0-9_][A-Za-z0-9_.-]*` up to 80), so no part can be `.`, `..`,
//! empty or contain a path separator: a name can never point outside the store's `manifests/`.
//! Comparison is case-insensitive ([`ModelName::key`]) as in Ollama; the spelling of the manifest
//! on disk is what a lookup returns.
//!
//! Modelled on Ollama's `types/model/name.go` (grammar and display rules; our own code).

use std::fmt;
use std::path::PathBuf;

use crate::StoreError;

pub const DEFAULT_HOST: &str = "registry.ollama.ai";
pub const DEFAULT_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";

/// A fully qualified model name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelName {
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

fn part_ok(s: &str, max: usize, extra: &[char]) -> bool {
    let mut chars = s.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_');
    first_ok && s.len() <= max && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

impl ModelName {
    /// Parse `name`, filling in the defaults. An `hf.co/...` or any name whose first part looks
    /// like a host (has a dot or a port) keeps that host.
    pub fn parse(name: &str) -> Result<ModelName, StoreError> {
        let invalid = || StoreError::InvalidName(name.to_string());
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid());
        }
        // The tag is after the last ':' that comes after the last '/' (a host may carry a port).
        let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
            None => (name, DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [m] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *m),
            [ns, m] => (DEFAULT_HOST, *ns, *m),
            [h, ns, m] => (*h, *ns, *m),
            _ => return Err(invalid()),
        };
        let n = ModelName { host: host.into(), namespace: namespace.into(), model: model.into(), tag: tag.into() };
        if !part_ok(&n.host, 350, &['.', ':', '-'])
            || !part_ok(&n.namespace, 80, &['-'])
            || !part_ok(&n.model, 80, &['.', '-'])
            || !part_ok(&n.tag, 80, &['.', '-'])
        {
            return Err(invalid());
        }
        Ok(n)
    }

    /// Ollama's `DisplayShortest`: host left out when it is the default, namespace too when it is
    /// `library`; always `model:tag`.
    pub fn display_shortest(&self) -> String {
        if !self.host.eq_ignore_ascii_case(DEFAULT_HOST) {
            format!("{}/{}/{}:{}", self.host, self.namespace, self.model, self.tag)
        } else if !self.namespace.eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
            format!("{}/{}:{}", self.namespace, self.model, self.tag)
        } else {
            format!("{}:{}", self.model, self.tag)
        }
    }

    /// The case-folded form two names are compared by.
    pub fn key(&self) -> String {
        format!("{}/{}/{}:{}", self.host, self.namespace, self.model, self.tag).to_ascii_lowercase()
    }

    /// Path of the manifest relative to the store's `manifests/` directory.
    pub fn manifest_rel_path(&self) -> PathBuf {
        [&self.host, &self.namespace, &self.model, &self.tag].iter().collect()
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}:{}", self.host, self.namespace, self.model, self.tag)
    }
}

/// A blob digest `sha256:<64 hex>` (also accepted: `sha256-<hex>`), normalised to lower case
/// with a colon.
pub fn parse_digest(d: &str) -> Result<String, StoreError> {
    let hex = d.strip_prefix("sha256:").or_else(|| d.strip_prefix("sha256-"));
    match hex {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(format!("sha256:{}", h.to_ascii_lowercase())),
        _ => Err(StoreError::InvalidDigest(d.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_display() {
        let n = ModelName::parse("llama3.2").unwrap();
        assert_eq!(n.to_string(), "registry.ollama.ai/library/llama3.2:latest");
        assert_eq!(n.display_shortest(), "llama3.2:latest");
        let n = ModelName::parse("user/m:t").unwrap();
        assert_eq!((n.namespace.as_str(), n.tag.as_str()), ("user", "t"));
        assert_eq!(n.display_shortest(), "user/m:t");
        let n = ModelName::parse("hf.co/bartowski/X-GGUF:Q4_K_M").unwrap();
        assert_eq!(n.manifest_rel_path(), PathBuf::from("hf.co/bartowski/X-GGUF/Q4_K_M"));
        assert_eq!(n.display_shortest(), "hf.co/bartowski/X-GGUF:Q4_K_M");
        let n = ModelName::parse("localhost:5000/ns/m").unwrap();
        assert_eq!((n.host.as_str(), n.tag.as_str()), ("localhost:5000", "latest"));
    }

    #[test]
    fn case_insensitive_key() {
        assert_eq!(ModelName::parse("SmolLM2:Latest").unwrap().key(), ModelName::parse("smollm2").unwrap().key());
    }

    #[test]
    fn no_traversal() {
        for bad in ["..", "../x", "a/../b", "m:..", "m:../x", "/abs", "a/b/c/d", "", "m:", ":t", "a b", "m:t/x", ".hidden", "x\\y"] {
            assert!(ModelName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digests() {
        let h = "A".repeat(64);
        assert_eq!(parse_digest(&format!("sha256-{h}")).unwrap(), format!("sha256:{}", "a".repeat(64)));
        assert!(parse_digest("sha256:abc").is_err());
        assert!(parse_digest(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(parse_digest(&format!("md5:{h}")).is_err());
    }
}
