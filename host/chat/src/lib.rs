//! Chat templates (placeholder)
