//! A device lost after load, seen from the engine (issue 10, "Bad input and failures"): when a
//! forward pass fails because the model's device is gone (`RuntimeError::is_device_lost`), every
//! request in flight — running or still waiting — ends with that error (no hang, no further
//! tokens), later submissions are refused with `EngineError::DeviceLost`, and
//! `Engine::device_lost` reports it; any other forward failure ends only the batch's requests and
//! the engine keeps taking work.
//!
//! The failure is injected at the backend seam (`Executor::fail_after`, the real CPU backend
//! underneath): this tests the engine's control flow. The real device path is tested on the GPU
//! (`host/gpu/tests/gpu_fault.rs`, `host/runtime/tests/gpu_backend.rs`).
//!
//! Needs the llama plugin built (`cargo build --workspace`, as scripts/test.sh does).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use rocmforge_engine::{
    Engine, EngineConfig, EngineError, Event, FinishReason, Finished, KvBudget, LoadOptions, Model, Request, RequestStream, SamplingParams,
    SchedulerConfig,
};
use rocmforge_runtime::backend::fault::injected_device_loss;
use rocmforge_runtime::exec::Device;
use rocmforge_runtime::{Registry, RuntimeError};

/// Forward calls that succeed before the injected failure.
const GOOD_STEPS: usize = 3;

fn engine(fail: impl Fn() -> RuntimeError + Send + 'static) -> Engine {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama.f32.gguf");
    let reg = Registry::discover();
    assert!(
        reg.plugins.iter().any(|p| p.name == "llama"),
        "the llama plugin did not load (build the workspace first: cargo build --workspace); failures: {:?}",
        reg.failures
    );
    let opts = LoadOptions { n_ctx: Some(128), kv: KvBudget::Blocks(32), device: Some(Device::Cpu), ..Default::default() };
    let m = Model::load(&path, &reg, &opts).expect("load the tiny model");
    m.with_executor(|ex| ex.fail_after(GOOD_STEPS, fail)).expect("the executor before the engine takes it");
    // Two sequences at a time: of four requests, two run and two wait when the failure comes.
    let scheduler = SchedulerConfig { max_num_seqs: 2, max_num_batched_tokens: 64, ..Default::default() };
    Engine::start(m, EngineConfig { scheduler, deterministic: false }).expect("engine")
}

fn request(seed: u32) -> Request {
    let prompt: Vec<u32> = (0..6).map(|i| 1 + (seed * 7 + i * 3) % 60).collect();
    let mut r = Request::new(prompt, SamplingParams::greedy());
    r.max_tokens = Some(20);
    r.ignore_eos = true;
    r
}

/// Tokens and the end of a stream, failing (instead of hanging) if it does not end in time.
fn collect(mut s: RequestStream) -> (Vec<u32>, Finished) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut toks = Vec::new();
        while let Some(ev) = s.blocking_recv() {
            match ev {
                Event::Delta { tokens, .. } => toks.extend(tokens),
                Event::Done(f) => {
                    let _ = tx.send((toks, f));
                    return;
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the request neither finished nor failed within 60 s")
}

#[test]
fn a_lost_device_fails_every_request_in_flight_and_refuses_new_ones() {
    let e = engine(injected_device_loss);
    let streams: Vec<RequestStream> = (0..4).map(|i| e.submit(request(i)).expect("submit")).collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (toks, f) = collect(s);
        assert_eq!(f.reason, FinishReason::Error, "request {i}: {f:?}");
        let msg = f.error.unwrap_or_default();
        assert!(msg.contains("CUDA_ERROR_ILLEGAL_ADDRESS (700)") && msg.contains("cannot be used again"), "request {i}: {msg}");
        // Only the steps before the failure produced tokens (one per step at most, greedy).
        assert!(toks.len() <= GOOD_STEPS, "request {i}: {} tokens after {GOOD_STEPS} good steps", toks.len());
    }
    let lost = e.device_lost().expect("the engine reports the lost device");
    assert!(lost.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{lost}");
    match e.submit(request(9)) {
        Err(EngineError::DeviceLost(m)) => assert_eq!(m, lost),
        Err(other) => panic!("a submission after the loss failed with {other}, not DeviceLost"),
        Ok(_) => panic!("a submission after the loss was accepted"),
    }
    // The engine thread still answers, holding nothing.
    let st = e.stats_blocking().expect("stats");
    assert_eq!((st.running, st.waiting), (0, 0), "{st:?}");
    assert_eq!(st.kv_blocks_free, st.kv_blocks_total, "KV blocks not returned: {st:?}");
}

#[test]
fn another_forward_failure_fails_the_batch_and_keeps_serving() {
    let e = engine(|| RuntimeError::Batch("injected transient failure".into()));
    let (_, f) = collect(e.submit(request(1)).expect("submit"));
    assert_eq!(f.reason, FinishReason::Error, "{f:?}");
    assert!(f.error.as_deref().unwrap_or_default().contains("injected transient failure"), "{f:?}");
    assert!(e.device_lost().is_none());
    // Still accepting work (it fails the same way, as every forward does now).
    let (_, f) = collect(e.submit(request(2)).expect("a submission is still accepted"));
    assert_eq!(f.reason, FinishReason::Error, "{f:?}");
}
