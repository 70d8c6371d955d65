//! The one error type of the GPU backend.
//!
//! Driver and compiler failures carry the call that failed, the raw status code and the vendor's
//! name for it (`CUDA_ERROR_ILLEGAL_ADDRESS`, `hipErrorNoDevice`), so a log line says what broke
//! without a debugger. Codes stay plain `i32`: a newer runtime may return values we do not know,
//! and a Rust enum over them would be undefined behaviour (the hip-sys mistake, ecosystem.md §1).

/// Errors of `rocmforge-gpu`.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// Neither the driver nor the runtime library could be opened.
    #[error("no GPU runtime library found (tried: {})", tried.join(", "))]
    LibraryNotFound { tried: Vec<String> },
    /// The library opened but lacks a symbol we need (too old a driver / runtime).
    #[error("{lib} has no symbol {symbol}: the driver or runtime is too old")]
    MissingSymbol { lib: String, symbol: String },
    /// A driver / runtime call returned an error status.
    #[error("{call} failed: {name} ({code})")]
    Driver { call: &'static str, code: i32, name: String },
    /// The run-time compiler (NVRTC / hipRTC) returned an error status outside compilation.
    #[error("{call} failed: {name} ({code})")]
    Rtc { call: &'static str, code: i32, name: String },
    /// A kernel source failed to compile; `log` is the compiler's own output.
    #[error("kernel {kernel} failed to compile:\n{log}")]
    Compile { kernel: String, log: String },
    /// The device spec (`cuda:0`, `hip:1`, `auto`) could not be parsed.
    #[error("bad device spec '{spec}': expected auto, cuda:N or hip:N")]
    BadSpec { spec: String },
    /// The runtime loaded but reports no usable device.
    #[error("no {vendor} device found ({detail})")]
    NoDevice { vendor: &'static str, detail: String },
    /// The device index is past the number of devices.
    #[error("{vendor} device {index} does not exist ({count} found)")]
    DeviceOutOfRange { vendor: &'static str, index: usize, count: usize },
    /// A host/device size or shape disagreement caught before touching the device.
    #[error("{op}: {what}")]
    Shape { op: &'static str, what: String },
    /// A tensor type the GPU kernels do not handle (yet).
    #[error("{op}: tensor type {ty} is not supported on the GPU")]
    Unsupported { op: &'static str, ty: &'static str },
    /// Reading or writing the kernel cache failed (never fatal for compilation: callers log it).
    #[error("kernel cache {path}: {source}")]
    Cache { path: String, source: std::io::Error },
    /// The device hit an error that poisons its context (an illegal address in a kernel, a
    /// failed launch, an uncorrectable ECC error: `api::poisons_context`). It is unusable for
    /// the rest of the process: this call and every later one on it (opening it again included)
    /// fail with this error, which names the first one.
    #[error(
        "GPU {device} is unusable after a device error ({call} failed: {name} ({code})); it stays unusable until the process restarts"
    )]
    DeviceLost { device: String, call: &'static str, code: i32, name: String },
}

impl GpuError {
    pub(crate) fn shape(op: &'static str, what: impl Into<String>) -> Self {
        GpuError::Shape { op, what: what.into() }
    }

    /// True for [`GpuError::DeviceLost`]: the device cannot be used again in this process, so
    /// callers fail the work in flight and stop using it (a retry cannot succeed).
    pub fn is_device_lost(&self) -> bool {
        matches!(self, GpuError::DeviceLost { .. })
    }
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;
