//! Fuzz target: `parse_safetensors_header` on arbitrary bytes must return a typed error or
//! tensors whose ranges lie inside the input with sizes matching shape x dtype. Differential
//! oracle: whatever the official `safetensors` crate accepts, we accept with the same tensors
//! (we are deliberately more lenient: unknown dtypes and gaps between tensors are allowed).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rocmforge_model::hf::parse_safetensors_header;

fuzz_target!(|data: &[u8]| {
    let ours = parse_safetensors_header(Path::new("fuzz.safetensors"), data);
    if let Ok(h) = &ours {
        for (t, r) in &h.tensors {
            assert!(r.start <= r.end && r.end <= data.len() as u64 && r.start >= h.data_start);
            if let Some(bits) = t.dtype.bits() {
                assert_eq!(t.n_elements() * bits, (r.end - r.start) * 8, "{}", t.name);
            }
        }
    }
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        let h = match ours {
            Ok(h) => h,
            Err(e) => panic!("the safetensors crate accepts this file but we reject it: {e}"),
        };
        assert_eq!(st.len(), h.tensors.len());
        for (t, r) in &h.tensors {
            let v = st.tensor(&t.name).expect("same tensor names");
            let shape: Vec<u64> = v.shape().iter().map(|&d| d as u64).collect();
            assert_eq!(shape, t.shape);
            assert_eq!(format!("{:?}", v.dtype()), t.dtype.name());
            assert_eq!(
                v.data().as_ptr() as usize - data.as_ptr() as usize,
                r.start as usize
            );
            assert_eq!(v.data().len() as u64, r.end - r.start);
        }
    }
});
