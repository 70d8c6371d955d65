//! Subcommands of the `rocmforge` binary that need more than a few lines.
pub mod bench;
pub mod chat;
pub mod client;
pub mod embed;
pub mod plugins;
pub mod pull;
pub mod quantize;
pub mod serve;
pub mod session;
pub mod synth;
