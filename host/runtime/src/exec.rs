//! exec placeholder
pub struct Executor; pub struct SeqBatch;
