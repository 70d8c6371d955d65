//! One prompt builder for every front end: chat messages through the model's template
//! (`/api/chat`, `/v1/chat/completions`, `rocmforge run`) and raw text (`/api/generate` with
//! `raw`, `/v1/completions`, `/completion`, `rocmforge generate`), with the BOS and special-token
//! rules written once.
//!
//! Rules (llama.cpp's `common_tokenize` + its chat path, which Ollama and llama-server follow):
//! - chat: the rendered text is tokenized with special tokens parsed (the template writes
//!   `<|im_start|>` and friends as text); BOS is prepended when the vocabulary asks for it, unless
//!   the template already wrote it (a second BOS changes the output of Llama-family models).
//! - raw: special tokens are parsed only when asked (`parse_special`; llama-server parses them,
//!   `rocmforge generate` does not); BOS as the vocabulary says when `add_special`.

use rocmforge_chat::RenderRequest;

use crate::{EngineError, Model};

pub struct PromptBuilder<'a> {
    model: &'a Model,
}

impl<'a> PromptBuilder<'a> {
    pub fn new(model: &'a Model) -> Self {
        PromptBuilder { model }
    }

    fn special_text(&self, id: Option<u32>) -> String {
        id.and_then(|i| self.model.tokenizer().token_text(i)).unwrap_or_default().to_string()
    }

    /// Render `req` with the model's template (its `bos_token` / `eos_token` filled in from the
    /// vocabulary) and return the text.
    pub fn render(&self, req: &RenderRequest<'_>) -> Result<String, EngineError> {
        let tok = self.model.tokenizer();
        let (bos, eos) = (self.special_text(tok.bos()), self.special_text(tok.eos()));
        let mut r = req.clone();
        r.bos_token = &bos;
        r.eos_token = &eos;
        self.model.template().render(&r).map_err(|e| EngineError::Template(e.to_string()))
    }

    /// Render and tokenize a chat (see the module header).
    pub fn chat(&self, req: &RenderRequest<'_>) -> Result<Vec<u32>, EngineError> {
        let text = self.render(req)?;
        self.chat_text(&text)
    }

    /// Tokenize text a chat template produced (special tokens parsed, BOS not doubled).
    pub fn chat_text(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let tok = self.model.tokenizer();
        let bos = self.special_text(tok.bos());
        let add_bos = tok.add_bos() && !(!bos.is_empty() && text.starts_with(&bos));
        let mut ids = Vec::new();
        if add_bos {
            ids.extend(tok.bos());
        }
        ids.extend(tok.encode(text, false, true).map_err(|e| EngineError::Tokenizer(e.to_string()))?);
        Ok(ids)
    }

    /// Tokenize a raw prompt (see the module header).
    pub fn raw(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, EngineError> {
        let tok = self.model.tokenizer();
        let mut ids = Vec::new();
        if add_special && tok.add_bos() {
            ids.extend(tok.bos());
        }
        ids.extend(tok.encode(text, false, parse_special).map_err(|e| EngineError::Tokenizer(e.to_string()))?);
        Ok(ids)
    }
}
