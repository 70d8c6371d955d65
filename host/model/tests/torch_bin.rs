//! PyTorch `.bin` checkpoints (`rocmforge_model::torch_bin`, and `HfModelDir` over them) against
//! files written by `torch.save` itself (`tests/fixtures/torch_bin/`, made by
//! `scripts/fixtures/torch_bin.py`, which recorded every tensor's bytes from torch in
//! `expected.json`): every tensor equal to torch's, byte for byte; the malicious pickles
//! refused with the global they import named; the legacy format refused with advice; every
//! truncation and single-byte corruption of a real file a clean error (or a consistent result),
//! never a panic; and hand-made pickles for what torch does not write on its own (big-endian
//! files, LONG1, inconsistent storages, hostile sizes, nesting and value counts).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use rocmforge_model::hf::HfModelDir;
use rocmforge_model::torch_bin::{load_state_dict, parse_torch_bin, TorchData, TorchTensor};
use rocmforge_model::ModelError;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_bin")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `(name, dtype, shape, bytes as hex)` of each tensor, as the generator recorded them from torch.
fn torch_tensors() -> Vec<(String, String, Vec<u64>, String)> {
    let e = expected();
    e["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            (k.clone(), v["dtype"].as_str().unwrap().to_string(), shape, v["hex"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Parsed tensors are consistent with themselves: bytes inside the file, sized by shape x dtype.
fn check_consistent(file: &[u8], ts: &[TorchTensor]) {
    for t in ts {
        let bytes = t.bytes(file).expect("mapped range inside the file");
        let bits = t.tensor.dtype.bits().expect("every .bin dtype has a known width");
        assert_eq!(bytes.len() as u64 * 8, t.tensor.n_elements() * bits, "{}", t.tensor.name);
    }
}

#[test]
fn every_tensor_equals_torch() {
    let want = torch_tensors();
    assert!(want.len() >= 20);
    for file in ["state_dict.bin", "state_dict_p4.bin"] {
        let bytes = read(file);
        let got = parse_torch_bin(Path::new(file), &bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        check_consistent(&bytes, &got);
        let names: Vec<&str> = got.iter().map(|t| t.tensor.name.as_str()).collect();
        assert_eq!(names, want.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(), "{file}: names in the dict's order");
        for (t, (name, dtype, shape, hx)) in got.iter().zip(&want) {
            assert_eq!(t.tensor.dtype.name(), dtype, "{file} {name}");
            assert_eq!(&t.tensor.shape, shape, "{file} {name}");
            assert_eq!(hex(t.bytes(&bytes).unwrap()), *hx, "{file} {name}: bytes differ from torch's");
        }
        // Contiguous little-endian tensors are views of the file; strided ones are copies.
        let by = |n: &str| &got.iter().find(|t| t.tensor.name == n).unwrap().data;
        for n in ["f32", "bf16", "i64", "shared.base", "view.offset", "param", "f8_e4m3", "u16"] {
            assert!(matches!(by(n), TorchData::Mapped(_)), "{file} {n} should be zero-copy");
        }
        for n in ["shared.transposed", "view.column", "expanded"] {
            assert!(matches!(by(n), TorchData::Owned(_)), "{file} {n} is strided");
        }
        // `view.offset` starts 5 floats into the storage `shared.base` begins.
        let (TorchData::Mapped(base), TorchData::Mapped(view)) = (by("shared.base"), by("view.offset")) else { unreachable!() };
        assert_eq!(view.start, base.start + 5 * 4, "{file}: shared storage, offset 5");
    }
}

fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), br#"{"architectures": ["TorchBinFixture"]}"#).unwrap();
    for (n, b) in files {
        std::fs::write(d.path().join(n), b).unwrap();
    }
    d
}

fn check_dir(m: &HfModelDir) {
    let want = torch_tensors();
    assert_eq!(m.tensors().len(), want.len());
    for (name, dtype, shape, hx) in &want {
        let t = m.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((t.dtype.name(), &t.shape), (dtype.as_str(), shape), "{name}");
        assert_eq!(hex(m.tensor_bytes(name).unwrap()), *hx, "{name}");
    }
    // tensor_f32 converts the float types as it does for safetensors.
    let bf16 = m.tensor_f32("bf16").unwrap();
    let raw = m.tensor_bytes("bf16").unwrap();
    assert_eq!(bf16, raw.chunks(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect::<Vec<_>>());
    let tr = m.tensor_f32("shared.transposed").unwrap();
    let base = m.tensor_f32("shared.base").unwrap();
    assert_eq!(tr[1], base[6], "transposed [0][1] is base [1][0] (base is 4 x 6)");
}

#[test]
fn hf_dir_with_pytorch_model_bin() {
    let d = dir_with(&[("pytorch_model.bin", &read("state_dict.bin"))]);
    let m = HfModelDir::open(d.path()).unwrap();
    assert_eq!(m.shard_paths(), [d.path().join("pytorch_model.bin").as_path()]);
    check_dir(&m);
}

#[test]
fn hf_dir_with_sharded_bin_and_index() {
    let m = HfModelDir::open(fixtures().join("sharded")).unwrap();
    assert_eq!(m.shard_paths().len(), 2);
    check_dir(&m);
    // The index must agree with the shards, as for safetensors.
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join("sharded")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
    }
    let idx = d.path().join("pytorch_model.bin.index.json");
    let text = std::fs::read_to_string(&idx).unwrap().replacen("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", 1);
    std::fs::write(&idx, text).unwrap();
    let e = HfModelDir::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("weight_map says"), "{e}");
}

#[test]
fn safetensors_win_over_bin() {
    let data = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    let st = safetensors::serialize([("only.safetensors", view)], None).unwrap();
    let d = dir_with(&[("pytorch_model.bin", &read("state_dict.bin")), ("model.safetensors", &st)]);
    let m = HfModelDir::open(d.path()).unwrap();
    assert_eq!(m.tensors().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["only.safetensors"]);
    let e = HfModelDir::open(dir_with(&[]).path()).unwrap_err().to_string();
    assert!(e.contains("no model.safetensors") && e.contains("pytorch_model.bin"), "{e}");
}

#[test]
fn malicious_pickles_are_refused_naming_the_global() {
    let e = expected();
    let evil = e["malicious"].as_object().unwrap();
    assert_eq!(evil.len(), 2);
    for (file, info) in evil {
        let global = info["refused_global"].as_str().unwrap();
        assert!(["posix.system", "nt.system", "builtins.eval"].contains(&global), "{global}");
        match parse_torch_bin(Path::new(file), &read(file)) {
            Err(ModelError::RefusedGlobal { global: g, .. }) => assert_eq!(g, global, "{file}"),
            other => panic!("{file}: {other:?}"),
        }
        // Through a model directory too, and the message names the global for the user.
        let d = dir_with(&[("pytorch_model.bin", &read(file))]);
        let msg = HfModelDir::open(d.path()).unwrap_err().to_string();
        assert!(msg.contains(&format!("'{global}'")) && msg.contains("refused"), "{msg}");
    }
    assert!(!Path::new("/tmp/rocmforge-pwned").exists(), "a payload ran");
}

#[test]
fn legacy_format_is_refused_with_advice() {
    let e = parse_torch_bin(Path::new("legacy.bin"), &read("legacy.bin")).unwrap_err().to_string();
    assert!(e.contains("legacy") && e.contains("torch >= 1.6") && e.contains("safetensors"), "{e}");
    let e = parse_torch_bin(Path::new("x"), b"not a checkpoint").unwrap_err().to_string();
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
}

#[test]
fn every_truncation_is_an_error() {
    let full = read("state_dict.bin");
    for n in 0..full.len() {
        assert!(parse_torch_bin(Path::new("t.bin"), &full[..n]).is_err(), "truncated to {n} bytes was accepted");
    }
}

#[test]
fn every_single_byte_corruption_is_clean() {
    // Storage bytes are not checksummed (torch.load does not check them either), so a flip there
    // still parses; anything accepted must be consistent, and nothing may panic.
    for file in ["state_dict.bin", "evil_eval.bin"] {
        let full = read(file);
        let (mut ok, mut err) = (0, 0);
        for i in 0..full.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = full.clone();
                b[i] ^= x;
                match parse_torch_bin(Path::new(file), &b) {
                    Ok(ts) => {
                        check_consistent(&b, &ts);
                        ok += 1
                    }
                    Err(_) => err += 1,
                }
            }
        }
        eprintln!("{file}: {ok} corrupted copies parsed, {err} refused");
        assert!(err > 0);
    }
}

#[test]
fn corrupted_pickles_are_clean() {
    // The pickle alone: every prefix and every byte replaced by every opcode value.
    let z = zip::ZipArchive::new(Cursor::new(read("state_dict_p4.bin"))).unwrap();
    let mut z = z;
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(&mut z.by_name("state_dict_p4/data.pkl").unwrap(), &mut pkl).unwrap();
    assert_eq!(load_state_dict(Path::new("p"), &pkl).unwrap().len(), torch_tensors().len());
    for n in 0..pkl.len() {
        assert!(load_state_dict(Path::new("p"), &pkl[..n]).is_err(), "prefix {n}");
    }
    for i in (0..pkl.len()).step_by(7) {
        for v in 0..=255u8 {
            let mut b = pkl.clone();
            b[i] = v;
            let _ = load_state_dict(Path::new("p"), &b);
        }
    }
}

// ---- hand-made pickles and archives -------------------------------------------------------

/// A tiny pickle writer for the opcodes torch.save uses.
#[derive(Default)]
struct Pkl(Vec<u8>);

impl Pkl {
    fn dict() -> Pkl {
        Pkl(vec![0x80, 2, b'}'])
    }
    fn raw(mut self, b: &[u8]) -> Pkl {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Pkl {
        self.raw(&[0x8c, s.len() as u8]).raw(s.as_bytes())
    }
    fn int(self, i: i64) -> Pkl {
        match u8::try_from(i) {
            Ok(b) => self.raw(&[b'K', b]),
            Err(_) => self.raw(&[0x8a, 8]).raw(&i.to_le_bytes()),
        }
    }
    fn global(self, m: &str, n: &str) -> Pkl {
        self.raw(format!("c{m}\n{n}\n").as_bytes())
    }
    fn ints(self, v: &[i64]) -> Pkl {
        v.iter().fold(self.raw(b"("), |p, &i| p.int(i)).raw(b"t")
    }
    /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', numel), offset, size, stride, False, {})`
    fn tensor(self, ty: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Pkl {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .raw(b"((")
            .str("storage")
            .global("torch", ty)
            .str(key)
            .str("cpu")
            .int(numel)
            .raw(b"tQ")
            .int(offset)
            .ints(size)
            .ints(stride)
            .raw(&[0x89, b'}', b't', b'R'])
    }
    fn item(self, name: &str, f: impl FnOnce(Pkl) -> Pkl) -> Pkl {
        f(self.str(name)).raw(b"s")
    }
    fn stop(self) -> Vec<u8> {
        self.raw(b".").0
    }
}

/// A torch.save-shaped archive under `archive/`.
fn archive(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opt = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64);
    for (name, data) in records {
        w.start_file(format!("archive/{name}"), opt).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn parse(b: &[u8]) -> Result<Vec<TorchTensor>, ModelError> {
    let r = parse_torch_bin(Path::new("crafted.bin"), b);
    if let Ok(ts) = &r {
        check_consistent(b, ts);
    }
    r
}

#[test]
fn big_endian_files_are_swapped() {
    // w: f32 2x2 stored transposed (strided); n: the last two of three i64 (storage offset 1).
    let pkl = Pkl::dict()
        .item("w", |p| p.tensor("FloatStorage", "0", 4, 0, &[2, 2], &[1, 2]))
        .item("n", |p| p.tensor("LongStorage", "1", 3, 1, &[2], &[1]))
        .stop();
    let f: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    let n: Vec<u8> = [7i64, -8, 1 << 40].iter().flat_map(|x| x.to_be_bytes()).collect();
    let file = archive(&[("data.pkl", &pkl), ("byteorder", b"big"), ("data/0", &f), ("data/1", &n)]);
    let ts = parse(&file).unwrap();
    let w: Vec<u8> = [1.0f32, 3.0, 2.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(ts[0].bytes(&file).unwrap(), w);
    let n: Vec<u8> = [-8i64, 1 << 40].iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(ts[1].bytes(&file).unwrap(), n);
    // The same little-endian: a zero-copy view; a bad byteorder record is an error.
    let le: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let one = Pkl::dict().item("w", |p| p.tensor("FloatStorage", "0", 4, 0, &[4], &[1])).stop();
    let file = archive(&[("data.pkl", &one), ("byteorder", b"little"), ("data/0", &le)]);
    assert!(matches!(parse(&file).unwrap()[0].data, TorchData::Mapped(_)));
    let file = archive(&[("data.pkl", &one), ("byteorder", b"middle"), ("data/0", &le)]);
    assert!(parse(&file).unwrap_err().to_string().contains("byteorder"));
}

#[test]
fn views_must_fit_their_storage() {
    let f = [0u8; 24]; // 6 floats
    let case = |numel: i64, offset: i64, size: &[i64], stride: &[i64]| {
        let pkl = Pkl::dict().item("t", |p| p.tensor("FloatStorage", "0", numel, offset, size, stride)).stop();
        parse(&archive(&[("data.pkl", &pkl), ("data/0", &f)])).map_err(|e| e.to_string())
    };
    assert!(case(6, 0, &[2, 3], &[3, 1]).is_ok());
    assert!(case(6, 3, &[3], &[1]).is_ok());
    assert!(case(6, 4, &[3], &[1]).unwrap_err().contains("reaches byte 28 of a 24-byte storage"));
    assert!(case(6, 0, &[2, 3], &[4, 1]).unwrap_err().contains("reaches"));
    assert!(case(6, 0, &[], &[]).is_ok(), "a 0-d tensor is one element");
    assert!(case(6, 99, &[0, 5], &[5, 1]).is_ok(), "an empty tensor reads nothing");
    assert!(case(7, 0, &[6], &[1]).unwrap_err().contains("has 24 bytes, its persistent id says 7"));
    assert!(case(6, 0, &[1 << 40, 1 << 40], &[1 << 40, 1 << 40]).unwrap_err().contains("overflow"));
    // Stride 0 over one element: a terabyte of copies from a tiny file is refused up front.
    assert!(case(6, 0, &[1 << 20, 1 << 20], &[0, 0]).unwrap_err().contains("copy budget"));
    assert!(case(6, 0, &[2, 3], &[3]).unwrap_err().contains("2 sizes and 1 strides"));
    assert!(case(6, -1, &[1], &[1]).unwrap_err().contains("offset"));
    let pkl = Pkl::dict().item("t", |p| p.tensor("FloatStorage", "9", 6, 0, &[6], &[1])).stop();
    assert!(parse(&archive(&[("data.pkl", &pkl), ("data/0", &f)])).unwrap_err().to_string().contains("'data/9' is missing"));
    // One key named with two types.
    let pkl = Pkl::dict()
        .item("a", |p| p.tensor("FloatStorage", "0", 6, 0, &[6], &[1]))
        .item("b", |p| p.tensor("IntStorage", "0", 6, 0, &[6], &[1]))
        .stop();
    assert!(parse(&archive(&[("data.pkl", &pkl), ("data/0", &f)])).unwrap_err().to_string().contains("named as"));
    assert!(parse(&archive(&[("data/0", &f)])).unwrap_err().to_string().contains("no 'archive/data.pkl'"));
}

#[test]
fn pickle_structure_errors() {
    let err = |p: &[u8]| load_state_dict(Path::new("p"), p).unwrap_err().to_string();
    let refused = |p: &[u8]| match load_state_dict(Path::new("p"), p) {
        Err(ModelError::RefusedGlobal { global, .. }) => global,
        other => panic!("{other:?}"),
    };
    // Any global off the list is refused where it is named, before REDUCE could apply it.
    assert_eq!(refused(&Pkl::dict().global("subprocess", "Popen").stop()), "subprocess.Popen");
    assert_eq!(refused(&Pkl::dict().global("torch", "load").stop()), "torch.load");
    assert_eq!(refused(&Pkl::dict().global("torch._utils", "_rebuild_qtensor").stop()), "torch._utils._rebuild_qtensor");
    // STACK_GLOBAL from memoized strings (protocol 4's form) is checked the same way.
    let p = Pkl(vec![0x80, 4]).str("os").raw(&[0x94]).str("system").raw(&[0x94, 0x93]).stop();
    assert_eq!(refused(&p), "os.system");
    assert!(err(&Pkl(vec![0x80, 2]).int(3).stop()).contains("int, not a state dict"));
    assert!(err(&Pkl::dict().item("x", |p| p.int(3)).stop()).contains("entry 'x' is a int"));
    assert!(err(&Pkl::dict().raw(b"(0").stop()).contains("empty stack"), "POP may not reach below a MARK");
    assert!(err(&Pkl::dict().raw(b"u").stop()).contains("without a MARK"));
    assert!(err(&Pkl::dict().raw(b"h\x05").stop()).contains("unset index 5"));
    assert!(err(&Pkl::dict().global("torch", "FloatStorage").raw(b")R").stop()).contains("not a function"));
    assert!(err(&Pkl::dict().raw(b"i").stop()).contains("unsupported pickle opcode 0x69"));
    assert!(err(&[0x80, 1]).contains("protocol 1"));
    assert!(err(&Pkl::dict().raw(&[0x8a, 9]).raw(&[0; 9]).stop()).contains("integer of 9 bytes"));
    // A name given twice keeps its first place and its last value, like a Python dict.
    let p = Pkl::dict()
        .item("a", |p| p.tensor("FloatStorage", "0", 6, 0, &[6], &[1]))
        .item("b", |p| p.tensor("FloatStorage", "0", 6, 0, &[2], &[1]))
        .item("a", |p| p.tensor("FloatStorage", "0", 6, 1, &[3], &[1]))
        .stop();
    let sd = load_state_dict(Path::new("p"), &p).unwrap();
    assert_eq!(sd.iter().map(|(n, t)| (n.as_str(), t.offset)).collect::<Vec<_>>(), [("a", 1), ("b", 0)]);
    // Offsets and sizes past 2^31 arrive as LONG1.
    let p = Pkl::dict().item("big", |p| p.tensor("ByteStorage", "0", 1 << 33, 1 << 32, &[3], &[1 << 31])).stop();
    let t = &load_state_dict(Path::new("p"), &p).unwrap()[0].1;
    assert_eq!((t.storage.numel, t.offset, t.strides[0]), (1 << 33, 1 << 32, 1 << 31));
}

#[test]
fn hostile_sizes_are_bounded() {
    // A million nested 1-tuples (2 bytes each): refused at depth 64, no stack overflow on drop.
    let mut p = Pkl(vec![0x80, 2]).raw(b"N");
    p.0.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    assert!(load_state_dict(Path::new("p"), &p.stop()).unwrap_err().to_string().contains("nested more than 64"));
    // Five million pushes of None: the value budget stops it.
    let mut p = Pkl(vec![0x80, 2]);
    p.0.extend(std::iter::repeat_n(b'N', 5_000_000));
    assert!(load_state_dict(Path::new("p"), &p.stop()).unwrap_err().to_string().contains("too large for a state dict"));
    // A dict that holds itself (via the memo) is fine: no Rc cycle, nothing walks it.
    let p = Pkl::dict().raw(b"q\x00").str("self").raw(b"h\x00s").stop();
    assert!(load_state_dict(Path::new("p"), &p).unwrap_err().to_string().contains("'self' is a dict"));
    // Huge length prefixes are checked against the input before anything is allocated.
    for op in [&b"X\xff\xff\xff\xff"[..], b"B\xff\xff\xff\xff", b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x95\x00"] {
        assert!(load_state_dict(Path::new("p"), &Pkl(vec![0x80, 4]).raw(op).0).is_err());
    }
}
