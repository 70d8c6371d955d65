//! Fuzz target: PyTorch `.bin` checkpoints. Input starting with "PK" goes through
//! `parse_torch_bin` (zip records, restricted unpickler, views checked against storages);
//! anything else through `load_state_dict` alone, so the unpickler is reached without a valid
//! zip around it. Oracle: a typed error, or tensors whose bytes lie inside the input (or were
//! copied) and number exactly shape x dtype, with unique names; no panic, no hang, no
//! runaway allocation (the unpickler's value budget and the copy budget bound memory).
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rocmforge_model::torch_bin::{copy_budget, load_state_dict, parse_torch_bin, pickle::MAX_RANK, TorchData};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.bin");
    if data.starts_with(b"PK") {
        let Ok(tensors) = parse_torch_bin(path, data) else { return };
        let mut names = HashSet::new();
        let mut copied = 0u64;
        for t in &tensors {
            assert!(names.insert(t.tensor.name.as_str()), "duplicate name {}", t.tensor.name);
            let bytes = t.bytes(data).expect("mapped range inside the input");
            let bits = t.tensor.dtype.bits().expect("known width");
            assert_eq!(bytes.len() as u64 * 8, t.tensor.n_elements() * bits, "{}", t.tensor.name);
            if let TorchData::Owned(v) = &t.data {
                copied += v.len() as u64;
            }
        }
        assert!(copied <= copy_budget(data.len() as u64));
    } else if let Ok(sd) = load_state_dict(path, data) {
        for (_, t) in &sd {
            assert_eq!(t.shape.len(), t.strides.len());
            assert!(t.shape.len() <= MAX_RANK);
        }
    }
});
