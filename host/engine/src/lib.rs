//! The engine: what turns a model's forward pass into generated text, independent of any backend.
//! It speaks token ids, KV block ids and counts (DESIGN.md §2.6): the KV block pool, the sampler,
//! stop sequences and the single-sequence generation loop used by `rocmforge run` / `generate` / `bench`.
//! Continuous batching and the prefix cache build on the same block pool.

pub mod block_pool;
pub mod sampler;
pub mod stop;

pub use block_pool::{BlockPool, KvError};
pub use sampler::{Sampler, SamplerConfig};
pub use stop::{StopCheck, StopSequences};
