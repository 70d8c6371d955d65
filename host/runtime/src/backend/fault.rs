//! Fault injection at the backend seam, for testing how the layers above (the engine, the
//! server's model manager) handle a device that fails after load, without a device:
//! [`FailAfter`] runs the real backend until a number of forward calls have succeeded, then
//! fails every call with a given error, as a GPU whose context an illegal address poisoned does
//! (`rocmforge_gpu::GpuError::DeviceLost`; [`injected_device_loss`] makes one). Installed with
//! `Executor::fail_after`. Nothing here runs unless a test asks for it.
//!
//! The real device path (a kernel that writes to an invalid address) is tested on the GPU by
//! `host/gpu/tests/gpu_fault.rs` and `host/runtime/tests/gpu_backend.rs`
//! (`device_fault_fails_every_later_forward`).

use crate::backend::Backend;
use crate::batch::BatchMeta;
use crate::dump::Dump;
use crate::exec::KvConfig;
use crate::graph::Graph;
use crate::plan::Plan;
use crate::RuntimeError;

/// The error a lost GPU gives, as `rocmforge_gpu` reports it, with a device name that says it
/// was injected.
pub fn injected_device_loss() -> RuntimeError {
    RuntimeError::Gpu(rocmforge_gpu::GpuError::DeviceLost {
        device: "cuda:0 (fault injected by a test)".into(),
        call: "StreamSynchronize",
        code: 700,
        name: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
    })
}

/// Runs `inner` for `after` successful forward calls, then fails every call with `err()`
/// (without running anything).
pub struct FailAfter {
    inner: Box<dyn Backend>,
    left: usize,
    err: Box<dyn Fn() -> RuntimeError + Send>,
}

impl FailAfter {
    pub fn new(inner: Box<dyn Backend>, after: usize, err: impl Fn() -> RuntimeError + Send + 'static) -> FailAfter {
        FailAfter { inner, left: after, err: Box::new(err) }
    }

    fn admit(&mut self) -> Result<(), RuntimeError> {
        if self.left == 0 {
            return Err((self.err)());
        }
        self.left -= 1;
        Ok(())
    }
}

impl Backend for FailAfter {
    fn name(&self) -> String {
        format!("{} (fault injection)", self.inner.name())
    }
    fn kv_config(&self) -> KvConfig {
        self.inner.kv_config()
    }
    fn forward(&mut self, g: &Graph, p: &Plan, b: &BatchMeta, dump: Option<&Dump>) -> Result<&[f32], RuntimeError> {
        self.admit()?;
        self.inner.forward(g, p, b, dump)
    }
    fn forward_argmax(&mut self, g: &Graph, p: &Plan, b: &BatchMeta) -> Result<Option<&[u32]>, RuntimeError> {
        self.admit()?;
        let r = self.inner.forward_argmax(g, p, b);
        if matches!(r, Ok(None)) {
            // Nothing ran: the caller's `forward` that follows is the same step.
            self.left += 1;
        }
        r
    }
}

/// Stands in for the backend while [`FailAfter`] takes it over (never called).
pub(crate) struct Detached(pub KvConfig);

impl Backend for Detached {
    fn name(&self) -> String {
        "detached".into()
    }
    fn kv_config(&self) -> KvConfig {
        self.0
    }
    fn forward(&mut self, _: &Graph, _: &Plan, _: &BatchMeta, _: Option<&Dump>) -> Result<&[f32], RuntimeError> {
        Err(RuntimeError::Batch("the backend is being replaced".into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_injected_loss_reads_as_a_lost_device() {
        let e = super::injected_device_loss();
        assert!(e.is_device_lost());
        let msg = e.to_string();
        assert!(msg.contains("CUDA_ERROR_ILLEGAL_ADDRESS (700)") && msg.contains("fault injected"), "{msg}");
        assert!(!crate::RuntimeError::Batch("x".into()).is_device_lost());
        // A kernel failure that is not a lost device stays one.
        let driver = crate::RuntimeError::Gpu(rocmforge_gpu::GpuError::Driver {
            call: "MemAlloc",
            code: 2,
            name: "CUDA_ERROR_OUT_OF_MEMORY".into(),
        });
        assert!(!driver.is_device_lost());
    }
}
