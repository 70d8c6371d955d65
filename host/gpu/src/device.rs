//! Devices, contexts, device memory, streams and events over the vendor table (`api.rs`).
//!
//! A [`Device`] holds the device's primary context (retained on open, released when the last
//! clone drops); every call binds it to the calling thread first (`cuCtxSetCurrent` /
//! `hipCtxSetCurrent`, a thread-local store), so `Device` and everything made from it can move
//! between threads. Objects ([`DeviceBuffer`], [`Stream`], [`Event`], modules, graphs) keep a
//! `Device` clone, so the context outlives them.
//!
//! Device discovery uses only `*DeviceGetAttribute` and name/memory queries (never
//! `hipDeviceProp_t`, whose layout changed in ROCm 6). The AMD architecture name (`gfx90a`),
//! which no attribute gives, comes from the KFD topology in sysfs, matched by PCI location.
//!
//! Lost devices: every status of a call made in a device's context goes through
//! [`Device::check`]. A status that poisons the context (`api::poisons_context`: an illegal
//! address, a failed launch, an uncorrectable ECC error) is recorded once per physical device,
//! process-wide (the first one wins), and from then on every call on that device (through any
//! `Device` value, and `Device::open` of it) fails at once with [`GpuError::DeviceLost`] naming
//! the first error, without calling the driver: the context stays poisoned until the process
//! exits, so nothing later could succeed, and a caller that waits on it must not hang.
//!
//! ```text
//!   call -> status 700 ──► lost[(cuda, 0)] = "StreamSynchronize: CUDA_ERROR_ILLEGAL_ADDRESS (700)"
//!   any later call / Device::open(cuda:0) ──► Err(DeviceLost { first error })
//! ```

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use crate::api::{self, attr_code, Attr, DevPtr, DriverApi, Handle, Vendor};
use crate::error::{GpuError, Result};

/// What `Device::open` reports about a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub vendor: Vendor,
    pub ordinal: usize,
    pub name: String,
    /// Compiler target: `sm_90` (NVIDIA) or `gfx90a` (AMD; `gfx000` if unknown).
    pub arch: String,
    /// (major, minor) compute capability on NVIDIA; HIP's emulated value on AMD.
    pub compute_capability: (i32, i32),
    pub warp_size: u32,
    pub multiprocessors: u32,
    /// Peak core clock in kHz.
    pub clock_khz: u32,
    pub total_memory: usize,
    pub l2_cache_bytes: usize,
    pub max_threads_per_block: u32,
    pub max_shared_per_block: usize,
    pub max_shared_per_block_optin: usize,
    /// Theoretical memory bandwidth from clock and bus width (bytes/s; 0 if not reported).
    pub peak_bandwidth: f64,
    pub driver_version: i32,
    pub library: String,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} {} ({}, warp {}, {} SMs/CUs, {:.1} GiB, {:.2} TB/s peak, driver {})",
            self.vendor.name(),
            self.ordinal,
            self.name,
            self.arch,
            self.warp_size,
            self.multiprocessors,
            self.total_memory as f64 / (1u64 << 30) as f64,
            self.peak_bandwidth / 1e12,
            self.driver_version
        )
    }
}

/// Which device to open: `auto`, `cuda:N` or `hip:N` (also `cuda` / `hip` for index 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Vendor(Vendor, usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = GpuError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || GpuError::BadSpec { spec: s.to_string() };
        let t = s.trim().to_ascii_lowercase();
        if t == "auto" || t == "gpu" {
            return Ok(DeviceSpec::Auto);
        }
        let (v, idx) = match t.split_once(':') {
            Some((v, i)) => (v, i.parse::<usize>().map_err(|_| bad())?),
            None => (t.as_str(), 0),
        };
        match v {
            "cuda" => Ok(DeviceSpec::Vendor(Vendor::Cuda, idx)),
            "hip" | "rocm" => Ok(DeviceSpec::Vendor(Vendor::Hip, idx)),
            _ => Err(bad()),
        }
    }
}

pub(crate) struct DeviceInner {
    pub api: &'static DriverApi,
    pub ctx: Handle,
    pub dev: c_int,
    pub info: DeviceInfo,
    /// The first context-poisoning error of this physical device (shared by every `Device` of
    /// it: [`lost_slot`]).
    lost: Arc<OnceLock<LostInfo>>,
}

/// The first error that made a device unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LostInfo {
    pub call: &'static str,
    pub code: i32,
    pub name: String,
}

impl LostInfo {
    fn error(&self, device: String) -> GpuError {
        GpuError::DeviceLost { device, call: self.call, code: self.code, name: self.name.clone() }
    }
}

/// One physical device's lost-state, shared by every `Device` of it.
type LostSlot = Arc<OnceLock<LostInfo>>;

/// The process-wide lost-state of device `ordinal` of vendor `v` (created empty on first use).
fn lost_slot(v: Vendor, ordinal: usize) -> LostSlot {
    static SLOTS: Mutex<Vec<((Vendor, usize), LostSlot)>> = Mutex::new(Vec::new());
    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, s)) = slots.iter().find(|(k, _)| *k == (v, ordinal)) {
        return s.clone();
    }
    let s = Arc::new(OnceLock::new());
    slots.push(((v, ordinal), s.clone()));
    s
}

/// `device` as error messages name it: `cuda:0 (NVIDIA H100 80GB HBM3)`.
fn device_label(v: Vendor, ordinal: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{}:{ordinal}", v.name())
    } else {
        format!("{}:{ordinal} ({name})", v.name())
    }
}

// SAFETY: the context handle is an opaque driver object usable from any thread once bound
// (each call binds it); the table is immutable.
unsafe impl Send for DeviceInner {}
// SAFETY: as above; the driver API is thread-safe for these calls.
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // SAFETY: the primary context was retained once in `open_vendor`.
        unsafe { (self.api.primary_ctx_release)(self.dev) };
    }
}

/// An opened GPU (cheap to clone).
#[derive(Clone)]
pub struct Device(pub(crate) Arc<DeviceInner>);

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.0.info)
    }
}

impl Device {
    /// Open the device `spec` names. `auto` tries CUDA, then HIP, device 0, and returns the
    /// first that opens; its error lists why each vendor failed (or is the `DeviceLost` of a
    /// device lost earlier in this process). A lost device is refused with `DeviceLost`.
    pub fn open(spec: DeviceSpec) -> Result<Device> {
        match spec {
            DeviceSpec::Vendor(v, i) => Self::open_vendor(v, i),
            DeviceSpec::Auto => {
                let mut why = Vec::new();
                let mut lost = None;
                for v in [Vendor::Cuda, Vendor::Hip] {
                    match Self::open_vendor(v, 0) {
                        Ok(d) => return Ok(d),
                        Err(e @ GpuError::DeviceLost { .. }) => lost = lost.or(Some(e)),
                        Err(e) => why.push(format!("{}: {e}", v.name())),
                    }
                }
                // A GPU that worked and was lost says so, rather than "no device".
                Err(lost.unwrap_or(GpuError::NoDevice { vendor: "GPU", detail: why.join("; ") }))
            }
        }
    }

    /// Parse `spec` (`auto`, `cuda:N`, `hip:N`) and open it.
    pub fn open_str(spec: &str) -> Result<Device> {
        Self::open(spec.parse()?)
    }

    /// Number of devices of vendor `v` (0 when its library is missing or finds none).
    pub fn count(v: Vendor) -> usize {
        let Ok(api) = api::driver(v) else { return 0 };
        let mut n = 0;
        // SAFETY: valid out-pointer; the library is initialised.
        if unsafe { (api.device_get_count)(&mut n) } != 0 {
            return 0;
        }
        n.max(0) as usize
    }

    fn open_vendor(v: Vendor, ordinal: usize) -> Result<Device> {
        let api = api::driver(v)?;
        let mut count = 0;
        // SAFETY: valid out-pointer.
        let rc = unsafe { (api.device_get_count)(&mut count) };
        if rc != 0 || count <= 0 {
            return Err(GpuError::NoDevice { vendor: v.name(), detail: format!("device count {count}, status {}", api.error_name(rc)) });
        }
        if ordinal >= count as usize {
            return Err(GpuError::DeviceOutOfRange { vendor: v.name(), index: ordinal, count: count as usize });
        }
        let lost = lost_slot(v, ordinal);
        if let Some(first) = lost.get() {
            return Err(first.error(device_label(v, ordinal, "")));
        }
        let mut dev = 0;
        // SAFETY: valid out-pointer, ordinal < count.
        api.check("DeviceGet", unsafe { (api.device_get)(&mut dev, ordinal as c_int) })?;
        let mut ctx: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer and device.
        api.check("DevicePrimaryCtxRetain", unsafe { (api.primary_ctx_retain)(&mut ctx, dev) })?;
        // From here on the Drop of DeviceInner releases the context.
        let mut inner = DeviceInner { api, ctx, dev, info: placeholder_info(v, ordinal, &api.lib_path), lost };
        // SAFETY: the context was just retained.
        api.check("CtxSetCurrent", unsafe { (api.ctx_set_current)(ctx) })?;
        inner.info = query_info(api, v, ordinal, dev)?;
        Ok(Device(Arc::new(inner)))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.0.info
    }

    pub fn vendor(&self) -> Vendor {
        self.0.info.vendor
    }

    pub(crate) fn api(&self) -> &'static DriverApi {
        self.0.api
    }

    /// Make this device's context current on the calling thread; fails at once, without a
    /// driver call, once the device is lost (the module header).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ensure_usable()?;
        // SAFETY: the context is retained for the life of self.
        self.check("CtxSetCurrent", unsafe { (self.0.api.ctx_set_current)(self.0.ctx) })
    }

    /// `Err(DeviceLost)` once a call on this device has poisoned its context.
    pub(crate) fn ensure_usable(&self) -> Result<()> {
        match self.0.lost.get() {
            Some(first) => Err(first.error(self.label())),
            None => Ok(()),
        }
    }

    /// The status `code` of `call`, made in this device's context: `Ok` for success; a
    /// context-poisoning status marks the device lost (the first such error is kept) and
    /// returns [`GpuError::DeviceLost`]; any other is a [`GpuError::Driver`].
    pub(crate) fn check(&self, call: &'static str, code: c_int) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        let api = self.0.api;
        if !api::poisons_context(api.vendor, code) {
            return api.check(call, code);
        }
        let first = self.0.lost.get_or_init(|| LostInfo { call, code, name: api.error_name(code) });
        Err(first.error(self.label()))
    }

    /// The error that made this device unusable (None while it works): a
    /// [`GpuError::DeviceLost`] naming the first context-poisoning error.
    pub fn lost(&self) -> Option<GpuError> {
        self.0.lost.get().map(|first| first.error(self.label()))
    }

    fn label(&self) -> String {
        device_label(self.0.info.vendor, self.0.info.ordinal, &self.0.info.name)
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers; context bound.
        self.check("MemGetInfo", unsafe { (self.0.api.mem_get_info)(&mut free, &mut total) })?;
        Ok((free, total))
    }

    /// Wait for all work on the device.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: context bound.
        self.check("CtxSynchronize", unsafe { (self.0.api.ctx_synchronize)() })
    }

    /// Uninitialised device memory for `len` values of `T`.
    pub fn alloc<T: DeviceCopy>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        self.bind()?;
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| GpuError::shape("alloc", format!("{len} values overflow")))?;
        let mut ptr: DevPtr = 0;
        if bytes > 0 {
            // SAFETY: valid out-pointer; context bound.
            self.check("MemAlloc", unsafe { (self.0.api.mem_alloc)(&mut ptr, bytes) })?;
        }
        Ok(DeviceBuffer { dev: self.clone(), ptr, len, owned: true, _t: PhantomData })
    }

    /// A device copy of `data` (synchronous).
    pub fn upload<T: DeviceCopy>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        let mut b = self.alloc::<T>(data.len())?;
        b.copy_from_host(data)?;
        Ok(b)
    }

    pub fn new_stream(&self) -> Result<Stream> {
        self.bind()?;
        let mut s: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; context bound.
        self.check("StreamCreate", unsafe { (self.0.api.stream_create)(&mut s, api::STREAM_NON_BLOCKING) })?;
        Ok(Stream { dev: self.clone(), raw: s })
    }

    /// An event; `timing` enables `elapsed_ms` (timing events cost a little more to record).
    pub fn new_event(&self, timing: bool) -> Result<Event> {
        self.bind()?;
        let mut e: Handle = std::ptr::null_mut();
        let flags = if timing { 0 } else { api::EVENT_DISABLE_TIMING };
        // SAFETY: valid out-pointer; context bound.
        self.check("EventCreate", unsafe { (self.0.api.event_create)(&mut e, flags) })?;
        Ok(Event { dev: self.clone(), raw: e })
    }
}

fn placeholder_info(vendor: Vendor, ordinal: usize, lib: &str) -> DeviceInfo {
    DeviceInfo {
        vendor,
        ordinal,
        name: String::new(),
        arch: String::new(),
        compute_capability: (0, 0),
        warp_size: 0,
        multiprocessors: 0,
        clock_khz: 0,
        total_memory: 0,
        l2_cache_bytes: 0,
        max_threads_per_block: 0,
        max_shared_per_block: 0,
        max_shared_per_block_optin: 0,
        peak_bandwidth: 0.0,
        driver_version: 0,
        library: lib.to_string(),
    }
}

fn query_info(api: &'static DriverApi, vendor: Vendor, ordinal: usize, dev: c_int) -> Result<DeviceInfo> {
    let attr = |a: Attr| -> Result<i32> {
        let mut v = 0;
        // SAFETY: valid out-pointer and device handle.
        api.check("DeviceGetAttribute", unsafe { (api.device_get_attribute)(&mut v, attr_code(vendor, a), dev) })?;
        Ok(v)
    };
    let mut name = [0 as c_char; 256];
    // SAFETY: the buffer holds 256 bytes, as passed.
    api.check("DeviceGetName", unsafe { (api.device_get_name)(name.as_mut_ptr(), name.len() as c_int, dev) })?;
    // SAFETY: the driver NUL-terminates within the buffer; make sure of it anyway.
    name[255] = 0;
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().trim().to_string();
    let mut total = 0usize;
    // SAFETY: valid out-pointer.
    api.check("DeviceTotalMem", unsafe { (api.device_total_mem)(&mut total, dev) })?;
    let mut drv = 0;
    // SAFETY: valid out-pointer.
    api.check("DriverGetVersion", unsafe { (api.driver_get_version)(&mut drv) })?;
    let cc = (attr(Attr::ComputeCapabilityMajor)?, attr(Attr::ComputeCapabilityMinor)?);
    let warp = attr(Attr::WarpSize)?;
    let arch = match vendor {
        Vendor::Cuda => format!("sm_{}{}", cc.0, cc.1),
        Vendor::Hip => {
            let loc = (attr(Attr::PciDomainId).unwrap_or(0), attr(Attr::PciBusId).unwrap_or(0), attr(Attr::PciDeviceId).unwrap_or(0));
            kfd_arch(loc, ordinal).unwrap_or_else(|| "gfx000".to_string())
        }
    };
    let mem_clock_khz = attr(Attr::MemoryClockRateKhz).unwrap_or(0) as f64;
    let bus_bits = attr(Attr::MemoryBusWidthBits).unwrap_or(0) as f64;
    let opt = |a| attr(a).unwrap_or(0).max(0) as usize;
    Ok(DeviceInfo {
        vendor,
        ordinal,
        name,
        arch,
        compute_capability: cc,
        warp_size: warp.max(1) as u32,
        multiprocessors: attr(Attr::MultiprocessorCount)?.max(0) as u32,
        clock_khz: attr(Attr::ClockRateKhz).unwrap_or(0).max(0) as u32,
        total_memory: total,
        l2_cache_bytes: opt(Attr::L2CacheSize),
        max_threads_per_block: attr(Attr::MaxThreadsPerBlock)?.max(0) as u32,
        max_shared_per_block: opt(Attr::MaxSharedPerBlock),
        max_shared_per_block_optin: opt(Attr::MaxSharedPerBlockOptin),
        // Double data rate: two transfers per memory clock.
        peak_bandwidth: mem_clock_khz * 1e3 * 2.0 * bus_bits / 8.0,
        driver_version: drv,
        library: api.lib_path.clone(),
    })
}

/// The `gfx...` name of the AMD GPU at PCI (domain, bus, device), from
/// `/sys/class/kfd/kfd/topology/nodes/*/properties`; else the `ordinal`-th GPU node.
fn kfd_arch(loc: (i32, i32, i32), ordinal: usize) -> Option<String> {
    let mut nodes: Vec<(usize, String)> = std::fs::read_dir("/sys/class/kfd/kfd/topology/nodes")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let idx = e.file_name().to_str()?.parse::<usize>().ok()?;
            Some((idx, std::fs::read_to_string(e.path().join("properties")).ok()?))
        })
        .collect();
    nodes.sort_by_key(|n| n.0);
    let gpus: Vec<&String> = nodes.iter().map(|n| &n.1).filter(|p| kfd_field(p, "gfx_target_version").unwrap_or(0) != 0).collect();
    let want_loc = ((loc.1 as u64) << 8) | ((loc.2 as u64) << 3);
    let by_pci = gpus.iter().find(|p| kfd_field(p, "location_id") == Some(want_loc) && kfd_field(p, "domain").unwrap_or(0) == loc.0 as u64);
    let props = by_pci.or_else(|| gpus.get(ordinal))?;
    gfx_name(kfd_field(props, "gfx_target_version")?)
}

fn kfd_field(props: &str, key: &str) -> Option<u64> {
    props.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// KFD's `gfx_target_version` (major * 10000 + minor * 100 + stepping) as a target name:
/// 90010 -> gfx90a, 110000 -> gfx1100, 90402 -> gfx942.
pub(crate) fn gfx_name(v: u64) -> Option<String> {
    if v == 0 {
        return None;
    }
    let (major, minor, step) = (v / 10000, (v / 100) % 100, v % 100);
    Some(format!("gfx{major}{minor:x}{step:x}"))
}

/// Types that may be copied to and from the device as raw bytes.
///
/// # Safety
/// Implementors must be plain data: every bit pattern valid, no padding, no pointers.
pub unsafe trait DeviceCopy: Copy + Send + Sync + 'static {}
// SAFETY: primitive numeric types are plain data.
unsafe impl DeviceCopy for u8 {}
// SAFETY: as above.
unsafe impl DeviceCopy for i8 {}
// SAFETY: as above.
unsafe impl DeviceCopy for u16 {}
// SAFETY: as above.
unsafe impl DeviceCopy for u32 {}
// SAFETY: as above.
unsafe impl DeviceCopy for i32 {}
// SAFETY: as above.
unsafe impl DeviceCopy for u64 {}
// SAFETY: as above.
unsafe impl DeviceCopy for i64 {}
// SAFETY: as above.
unsafe impl DeviceCopy for f32 {}

/// `len` values of `T` in device memory, freed on drop (unless it is a [`DeviceView`]'s window
/// into another buffer, which the view's owner frees).
pub struct DeviceBuffer<T: DeviceCopy> {
    dev: Device,
    ptr: DevPtr,
    len: usize,
    /// False for the windows handed out by [`DeviceBuffer::view`]: they never free.
    owned: bool,
    _t: PhantomData<T>,
}

/// A window `[offset, offset + len)` of a [`DeviceBuffer`], usable wherever a `DeviceBuffer` is
/// taken (it derefs to one), e.g. one node's rows in an activation arena. It borrows its parent,
/// so it cannot outlive the allocation.
///
/// A view is writable although it borrows its parent shared: device memory is not Rust memory
/// (no Rust reference ever points into it, only `u64` addresses handed to the driver), so two
/// views of one buffer alias nothing the compiler reasons about. Ordering of device reads and
/// writes is the stream's business, as for any two buffers.
pub struct DeviceView<'a, T: DeviceCopy> {
    buf: DeviceBuffer<T>,
    _parent: PhantomData<&'a DeviceBuffer<T>>,
}

impl<T: DeviceCopy> std::ops::Deref for DeviceView<'_, T> {
    type Target = DeviceBuffer<T>;
    fn deref(&self) -> &DeviceBuffer<T> {
        &self.buf
    }
}

impl<T: DeviceCopy> std::ops::DerefMut for DeviceView<'_, T> {
    fn deref_mut(&mut self) -> &mut DeviceBuffer<T> {
        &mut self.buf
    }
}

impl<T: DeviceCopy> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>[{}] @ {:#x}", std::any::type_name::<T>(), self.len, self.ptr)
    }
}

impl<T: DeviceCopy> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if self.owned && self.ptr != 0 && self.dev.bind().is_ok() {
            // SAFETY: ptr came from MemAlloc / MemAllocAsync on this context and is freed once.
            unsafe { (self.dev.api().mem_free)(self.ptr) };
        }
    }
}

impl<T: DeviceCopy> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The raw device address (for kernel arguments).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The window of `len` values starting at value `offset` (see [`DeviceView`]).
    pub fn view(&self, offset: usize, len: usize) -> Result<DeviceView<'_, T>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(GpuError::shape("view", format!("[{offset}, {offset}+{len}) outside a buffer of {}", self.len)));
        }
        let ptr = if len == 0 { 0 } else { self.ptr + (offset * std::mem::size_of::<T>()) as u64 };
        Ok(DeviceView { buf: DeviceBuffer { dev: self.dev.clone(), ptr, len, owned: false, _t: PhantomData }, _parent: PhantomData })
    }

    fn check_len(&self, op: &'static str, n: usize) -> Result<()> {
        if n != self.len {
            return Err(GpuError::shape(op, format!("host slice has {n} values, device buffer {}", self.len)));
        }
        Ok(())
    }

    /// Synchronous host-to-device copy of exactly `len` values.
    pub fn copy_from_host(&mut self, data: &[T]) -> Result<()> {
        self.check_len("copy_from_host", data.len())?;
        if self.len == 0 {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: both ranges hold self.bytes() bytes (lengths checked).
        self.dev.check("MemcpyHtoD", unsafe { (self.dev.api().memcpy_htod)(self.ptr, data.as_ptr() as *const c_void, self.bytes()) })
    }

    /// Synchronous device-to-host copy into `out` (exactly `len` values).
    pub fn copy_to_host(&self, out: &mut [T]) -> Result<()> {
        self.check_len("copy_to_host", out.len())?;
        if self.len == 0 {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: both ranges hold self.bytes() bytes (lengths checked).
        self.dev.check("MemcpyDtoH", unsafe { (self.dev.api().memcpy_dtoh)(out.as_mut_ptr() as *mut c_void, self.ptr, self.bytes()) })
    }

    /// The contents as a new vector (synchronous; waits for earlier work on the legacy stream only,
    /// so synchronize your stream first).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        // SAFETY: DeviceCopy types are plain data: the all-zero pattern is a valid value.
        let zero: T = unsafe { std::mem::zeroed() };
        let mut v = vec![zero; self.len];
        self.copy_to_host(&mut v)?;
        Ok(v)
    }

    /// Device-to-device copy of all of `src` (same length) into self (synchronous).
    pub fn copy_from_device(&mut self, src: &DeviceBuffer<T>) -> Result<()> {
        self.check_len("copy_from_device", src.len)?;
        if self.len == 0 {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: both device ranges hold self.bytes() bytes.
        self.dev.check("MemcpyDtoD", unsafe { (self.dev.api().memcpy_dtod)(self.ptr, src.ptr, self.bytes()) })
    }
}

/// An ordered queue of device work.
pub struct Stream {
    dev: Device,
    raw: Handle,
}

// SAFETY: stream handles may be used from any thread (the driver serialises per stream).
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: created in new_stream, destroyed once.
            unsafe { (self.dev.api().stream_destroy)(self.raw) };
        }
    }
}

impl Stream {
    pub fn device(&self) -> &Device {
        &self.dev
    }
    pub(crate) fn raw(&self) -> Handle {
        self.raw
    }

    pub fn synchronize(&self) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: live stream.
        self.dev.check("StreamSynchronize", unsafe { (self.dev.api().stream_synchronize)(self.raw) })
    }

    /// Make later work on this stream wait for `ev`.
    pub fn wait_event(&self, ev: &Event) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: live stream and event.
        self.dev.check("StreamWaitEvent", unsafe { (self.dev.api().stream_wait_event)(self.raw, ev.raw, 0) })
    }

    /// Asynchronous host-to-device copy. The host slice must stay alive and unchanged until the
    /// stream reaches the copy; with pageable memory (a plain slice) the drivers stage it before
    /// returning, which is what makes this safe to expose.
    pub fn copy_to_device<T: DeviceCopy>(&self, data: &[T], dst: &mut DeviceBuffer<T>) -> Result<()> {
        dst.check_len("copy_to_device", data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: sizes checked; the source is pageable host memory (staged by the driver).
        self.dev.check("MemcpyHtoDAsync", unsafe {
            (self.dev.api().memcpy_htod_async)(dst.ptr, data.as_ptr() as *const c_void, dst.bytes(), self.raw)
        })
    }

    /// Device-to-host copy ordered on this stream; returns once the data is in `out`.
    pub fn copy_to_host<T: DeviceCopy>(&self, src: &DeviceBuffer<T>, out: &mut [T]) -> Result<()> {
        src.check_len("copy_to_host", out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: sizes checked; we synchronize before `out` can be observed.
        self.dev.check("MemcpyDtoHAsync", unsafe {
            (self.dev.api().memcpy_dtoh_async)(out.as_mut_ptr() as *mut c_void, src.ptr, src.bytes(), self.raw)
        })?;
        self.synchronize()
    }

    /// Asynchronous device-to-device copy of `src` into `dst` (same length).
    pub fn copy_device<T: DeviceCopy>(&self, src: &DeviceBuffer<T>, dst: &mut DeviceBuffer<T>) -> Result<()> {
        dst.check_len("copy_device", src.len)?;
        if src.len == 0 {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: both ranges hold src.bytes() bytes.
        self.dev.check("MemcpyDtoDAsync", unsafe { (self.dev.api().memcpy_dtod_async)(dst.ptr, src.ptr, src.bytes(), self.raw) })
    }

    /// Fill `buf` with the 32-bit pattern `value` (`buf.bytes()` must be a multiple of 4): used to
    /// poison outputs before a kernel writes them.
    pub fn fill_u32<T: DeviceCopy>(&self, buf: &mut DeviceBuffer<T>, value: u32) -> Result<()> {
        if !buf.bytes().is_multiple_of(4) {
            return Err(GpuError::shape("fill_u32", format!("{} bytes is not a multiple of 4", buf.bytes())));
        }
        self.dev.bind()?;
        // SAFETY: the range holds bytes()/4 words.
        self.dev.check("MemsetD32Async", unsafe { (self.dev.api().memset_d32_async)(buf.ptr, value, buf.bytes() / 4, self.raw) })
    }

    /// Stream-ordered allocation (falls back to a plain allocation where the runtime has none).
    pub fn alloc<T: DeviceCopy>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let Some(f) = self.dev.api().mem_alloc_async else { return self.dev.alloc(len) };
        self.dev.bind()?;
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| GpuError::shape("alloc", format!("{len} values overflow")))?;
        let mut ptr: DevPtr = 0;
        if bytes > 0 {
            // SAFETY: valid out-pointer, live stream.
            self.dev.check("MemAllocAsync", unsafe { f(&mut ptr, bytes, self.raw) })?;
        }
        Ok(DeviceBuffer { dev: self.dev.clone(), ptr, len, owned: true, _t: PhantomData })
    }

    /// Free `buf` in stream order (after the work queued before it).
    pub fn free<T: DeviceCopy>(&self, mut buf: DeviceBuffer<T>) -> Result<()> {
        let Some(f) = self.dev.api().mem_free_async else { return Ok(()) }; // Drop frees synchronously
        if buf.ptr == 0 || !buf.owned {
            return Ok(()); // a view's memory belongs to its parent
        }
        self.dev.bind()?;
        let ptr = std::mem::replace(&mut buf.ptr, 0);
        // SAFETY: ptr is a live allocation of this context, freed once (buf no longer owns it).
        self.dev.check("MemFreeAsync", unsafe { f(ptr, self.raw) })
    }

    /// Start capturing the work queued on this stream into a graph (thread-local mode: other
    /// threads' unrelated driver calls are not affected).
    pub fn begin_capture(&self) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: live stream.
        self.dev
            .api()
            .check("StreamBeginCapture", unsafe { (self.dev.api().stream_begin_capture)(self.raw, api::CAPTURE_MODE_THREAD_LOCAL) })
    }

    /// End the capture begun by `begin_capture`; the captured work did not run.
    pub fn end_capture(&self) -> Result<Graph> {
        self.dev.bind()?;
        let mut g: Handle = std::ptr::null_mut();
        // SAFETY: live stream in capture mode; valid out-pointer.
        self.dev.check("StreamEndCapture", unsafe { (self.dev.api().stream_end_capture)(self.raw, &mut g) })?;
        Ok(Graph { dev: self.dev.clone(), raw: g })
    }
}

/// A device event (a marker in a stream).
pub struct Event {
    dev: Device,
    raw: Handle,
}

// SAFETY: event handles may be used from any thread.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Drop for Event {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: created in new_event, destroyed once.
            unsafe { (self.dev.api().event_destroy)(self.raw) };
        }
    }
}

impl Event {
    pub fn record(&self, s: &Stream) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: live event and stream.
        self.dev.check("EventRecord", unsafe { (self.dev.api().event_record)(self.raw, s.raw) })
    }
    pub fn synchronize(&self) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: live event.
        self.dev.check("EventSynchronize", unsafe { (self.dev.api().event_synchronize)(self.raw) })
    }
    /// Milliseconds from `start` to this event (both recorded and completed, both timing events).
    pub fn elapsed_ms(&self, start: &Event) -> Result<f32> {
        self.dev.bind()?;
        let mut ms = 0f32;
        // SAFETY: live events, valid out-pointer.
        self.dev.check("EventElapsedTime", unsafe { (self.dev.api().event_elapsed_time)(&mut ms, start.raw, self.raw) })?;
        Ok(ms)
    }
}

/// A captured graph, not yet executable.
pub struct Graph {
    dev: Device,
    raw: Handle,
}

// SAFETY: graph handles are plain driver objects, used under our own exclusive ownership.
unsafe impl Send for Graph {}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: created by end_capture, destroyed once.
            unsafe { (self.dev.api().graph_destroy)(self.raw) };
        }
    }
}

impl Graph {
    /// An executable instance; replays read and write the same device addresses the captured
    /// kernels were given, so the buffers must outlive it and stay where they are.
    pub fn instantiate(&self) -> Result<GraphExec> {
        self.dev.bind()?;
        let mut e: Handle = std::ptr::null_mut();
        // SAFETY: live graph, valid out-pointer, flags 0.
        self.dev.check("GraphInstantiate", unsafe { (self.dev.api().graph_instantiate)(&mut e, self.raw, 0) })?;
        Ok(GraphExec { dev: self.dev.clone(), raw: e })
    }
}

/// An instantiated graph, replayed with [`GraphExec::launch`].
pub struct GraphExec {
    dev: Device,
    raw: Handle,
}

// SAFETY: as Graph.
unsafe impl Send for GraphExec {}

impl Drop for GraphExec {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: created by instantiate, destroyed once.
            unsafe { (self.dev.api().graph_exec_destroy)(self.raw) };
        }
    }
}

impl GraphExec {
    /// Upload the graph's work descriptors ahead of the first launch (optional; a no-op where the
    /// runtime lacks it).
    pub fn upload(&self, s: &Stream) -> Result<()> {
        let Some(f) = self.dev.api().graph_upload else { return Ok(()) };
        self.dev.bind()?;
        // SAFETY: live graph exec and stream.
        self.dev.check("GraphUpload", unsafe { f(self.raw, s.raw) })
    }
    /// Replay the graph on `s`.
    pub fn launch(&self, s: &Stream) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: live graph exec and stream.
        self.dev.check("GraphLaunch", unsafe { (self.dev.api().graph_launch)(self.raw, s.raw) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("auto".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Auto));
        assert_eq!("cuda:1".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Vendor(Vendor::Cuda, 1)));
        assert_eq!("HIP:0".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Vendor(Vendor::Hip, 0)));
        assert_eq!("cuda".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Vendor(Vendor::Cuda, 0)));
        for bad in ["cpu", "cuda:x", "metal:0", "cuda:-1", ""] {
            assert!(matches!(bad.parse::<DeviceSpec>(), Err(GpuError::BadSpec { .. })), "{bad}");
        }
    }

    #[test]
    fn a_lost_device_is_shared_process_wide_and_keeps_its_first_error() {
        // An ordinal no machine has, so no real device shares the slot.
        let slot = lost_slot(Vendor::Hip, 9999);
        assert!(Arc::ptr_eq(&slot, &lost_slot(Vendor::Hip, 9999)), "one slot per physical device");
        assert!(!Arc::ptr_eq(&slot, &lost_slot(Vendor::Cuda, 9999)));
        assert!(slot.get().is_none());
        slot.get_or_init(|| LostInfo { call: "StreamSynchronize", code: 700, name: "hipErrorIllegalAddress".into() });
        let later = lost_slot(Vendor::Hip, 9999);
        let first = later.get_or_init(|| LostInfo { call: "LaunchKernel", code: 719, name: "hipErrorLaunchFailure".into() });
        assert_eq!((first.call, first.code), ("StreamSynchronize", 700), "the first error is kept");
        let e = first.error(device_label(Vendor::Hip, 9999, "AMD Instinct MI210"));
        assert!(e.is_device_lost());
        let msg = e.to_string();
        for part in
            ["hip:9999 (AMD Instinct MI210)", "StreamSynchronize failed: hipErrorIllegalAddress (700)", "until the process restarts"]
        {
            assert!(msg.contains(part), "{msg}");
        }
    }

    #[test]
    fn gfx_names_from_kfd_versions() {
        assert_eq!(gfx_name(90010).as_deref(), Some("gfx90a"));
        assert_eq!(gfx_name(90402).as_deref(), Some("gfx942"));
        assert_eq!(gfx_name(110000).as_deref(), Some("gfx1100"));
        assert_eq!(gfx_name(100300).as_deref(), Some("gfx1030"));
        assert_eq!(gfx_name(90006).as_deref(), Some("gfx906"));
        assert_eq!(gfx_name(0), None);
    }

    #[test]
    fn kfd_fields_parse() {
        let p = "cpu_cores_count 0\nsimd_count 440\ngfx_target_version 90010\nlocation_id 768\ndomain 0\n";
        assert_eq!(kfd_field(p, "gfx_target_version"), Some(90010));
        assert_eq!(kfd_field(p, "location_id"), Some(768));
        assert_eq!(kfd_field(p, "missing"), None);
    }
}
