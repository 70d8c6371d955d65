//! Loaded code objects (cubin / AMD code object / PTX text), their kernels, and kernel launch.
//!
//! A [`Function`] keeps its module alive. Launch arguments are packed by [`KernelArgs`]: one
//! 8-byte slot per argument and an array of pointers to the slots, which is what
//! `cuLaunchKernel` / `hipModuleLaunchKernel` read (each parameter is copied from its pointer
//! with the size the kernel declares; little-endian slots make 4-byte values read right).

use std::ffi::{c_void, CString};
use std::sync::Arc;

use crate::api::{self, Handle};
use crate::device::{Device, DeviceBuffer, DeviceCopy, Stream};
use crate::error::{GpuError, Result};

struct ModuleInner {
    dev: Device,
    raw: Handle,
}

// SAFETY: module handles are immutable driver objects once loaded.
unsafe impl Send for ModuleInner {}
// SAFETY: as above.
unsafe impl Sync for ModuleInner {}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: loaded in Module::load, unloaded once.
            unsafe { (self.dev.api().module_unload)(self.raw) };
        }
    }
}

/// A code object loaded on a device.
#[derive(Clone)]
pub struct Module(Arc<ModuleInner>);

impl Module {
    /// Load a cubin, fatbin, NUL-terminated PTX text, or an AMD code object.
    pub fn load(dev: &Device, image: &[u8]) -> Result<Module> {
        if image.is_empty() {
            return Err(GpuError::shape("module_load", "empty image"));
        }
        // PTX must be NUL-terminated for the driver; binary images carry their own size.
        let mut owned;
        let data: &[u8] = if image.starts_with(b"//") || image.starts_with(b".version") {
            owned = image.to_vec();
            if owned.last() != Some(&0) {
                owned.push(0);
            }
            &owned
        } else {
            image
        };
        dev.bind()?;
        let mut m: Handle = std::ptr::null_mut();
        // SAFETY: `data` is a complete image (driver-validated), alive for the call.
        dev.check("ModuleLoadData", unsafe { (dev.api().module_load_data)(&mut m, data.as_ptr() as *const c_void) })?;
        Ok(Module(Arc::new(ModuleInner { dev: dev.clone(), raw: m })))
    }

    /// The kernel `name` (an `extern "C"` entry point).
    pub fn function(&self, name: &str) -> Result<Function> {
        let c = CString::new(name).map_err(|_| GpuError::shape("module_get_function", "name contains NUL"))?;
        self.0.dev.bind()?;
        let mut f: Handle = std::ptr::null_mut();
        // SAFETY: live module, NUL-terminated name, valid out-pointer.
        let rc = unsafe { (self.0.dev.api().module_get_function)(&mut f, self.0.raw, c.as_ptr()) };
        self.0.dev.check("ModuleGetFunction", rc).map_err(|e| match e {
            GpuError::Driver { code, name: n, .. } => GpuError::Driver { call: "ModuleGetFunction", code, name: format!("{n} ({name})") },
            e => e,
        })?;
        Ok(Function { module: self.clone(), raw: f, name: name.to_string() })
    }
}

/// One kernel of a loaded module.
#[derive(Clone)]
pub struct Function {
    module: Module,
    raw: Handle,
    name: String,
}

// SAFETY: function handles are immutable driver objects, valid while the module is loaded (the
// Function holds the module).
unsafe impl Send for Function {}
// SAFETY: as above.
unsafe impl Sync for Function {}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Function({})", self.name)
    }
}

impl Function {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Allow up to `bytes` of dynamic shared memory (NVIDIA needs an opt-in above 48 KiB).
    pub fn set_max_dynamic_shared(&self, bytes: usize) -> Result<()> {
        let dev = &self.module.0.dev;
        let Some(f) = dev.api().func_set_attribute else { return Ok(()) };
        dev.bind()?;
        // SAFETY: live function; attribute 8 takes a byte count.
        dev.check("FuncSetAttribute", unsafe { f(self.raw, api::FUNC_ATTR_MAX_DYNAMIC_SHARED, bytes as i32) })
    }

    /// Launch on `stream` with grid `grid` (blocks) of `block` threads and `shared` bytes of
    /// dynamic shared memory.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and size, and every
    /// pointer in it must address device memory the kernel may access for the whole launch
    /// (the typed wrappers in `kernels.rs` check shapes and then call this).
    pub unsafe fn launch(
        &self,
        stream: &Stream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared: u32,
        args: &mut KernelArgs,
    ) -> Result<()> {
        let dev = &self.module.0.dev;
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // nothing to do; a zero grid is an error on the driver side
        }
        dev.bind()?;
        let mut ptrs = args.pointers();
        // SAFETY: the caller guarantees the argument list; ptrs point into args' slots, alive for
        // the call (the driver copies the parameters before returning).
        let rc = unsafe {
            (dev.api().launch_kernel)(
                self.raw,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                shared,
                stream.raw(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        dev.check("LaunchKernel", rc).map_err(|e| match e {
            GpuError::Driver { code, name, .. } => GpuError::Driver { call: "LaunchKernel", code, name: format!("{name} ({})", self.name) },
            e => e,
        })
    }
}

/// Kernel arguments in launch order (see the module header).
#[derive(Default)]
pub struct KernelArgs {
    slots: Vec<u64>,
}

impl KernelArgs {
    pub fn new() -> Self {
        Self::default()
    }
    /// A device pointer argument.
    pub fn buf<T: DeviceCopy>(&mut self, b: &DeviceBuffer<T>) -> &mut Self {
        self.slots.push(b.device_ptr());
        self
    }
    /// An optional device pointer (null when absent).
    pub fn opt_buf<T: DeviceCopy>(&mut self, b: Option<&DeviceBuffer<T>>) -> &mut Self {
        self.slots.push(b.map_or(0, |b| b.device_ptr()));
        self
    }
    /// A raw device address (a sub-range of a buffer).
    pub fn ptr(&mut self, p: u64) -> &mut Self {
        self.slots.push(p);
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.slots.push(v as u32 as u64);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.slots.push(v as u64);
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.slots.push(v);
        self
    }
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.slots.push(v.to_bits() as u64);
        self
    }
    fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect()
    }
}
