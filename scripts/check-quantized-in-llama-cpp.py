#!/usr/bin/env python3
"""Check that a GGUF written by `rocmforge quantize` loads and runs in llama.cpp.

usage: check-quantized-in-llama-cpp.py OUT.gguf [--same-as IN.gguf TYPE]

Loads OUT.gguf with llama_cpp.Llama (llama-cpp-python, CPU), runs a short greedy completion and
prints it, then "OK". With --same-as, also quantizes IN.gguf to TYPE with llama.cpp's own
quantizer (llama_model_quantize, allow_requantize=True, as scripts/fixtures/quantize_reference.py)
and reports whether the two files are byte-identical (and, if not, which tensors differ).
Needs llama-cpp-python (not on CI): run by hand, e.g.
    /work/venv/bin/python scripts/check-quantized-in-llama-cpp.py /tmp/smollm2-q4_k_m.gguf
"""
import os
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, ".cache", "llama.cpp", "gguf-py"))

import llama_cpp  # noqa: E402

PROMPT = "The capital of France is"


def compare_with_llama_cpp(out_path, in_path, typ):
    import gguf

    name = {"F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "F32": "ALL_F32"}.get(typ.upper(), "MOSTLY_" + typ.upper())
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "ref.gguf")
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + name)
        p.allow_requantize = True
        p.nthread = 0
        if llama_cpp.llama_model_quantize(in_path.encode(), ref.encode(), p) != 0:
            sys.exit("llama.cpp's quantizer failed on " + in_path)
        with open(out_path, "rb") as f, open(ref, "rb") as g:
            same = f.read() == g.read()
        print(f"byte-identical to llama.cpp's {typ} quantization of {in_path}: {same}")
        if not same:
            a, b = gguf.GGUFReader(out_path), gguf.GGUFReader(ref)
            ta = {t.name: t for t in a.tensors}
            n_diff = 0
            for t in b.tensors:
                o = ta.get(t.name)
                if o is None or o.tensor_type != t.tensor_type or o.data.tobytes() != t.data.tobytes():
                    n_diff += 1
                    print("  differs:", t.name, t.tensor_type.name, None if o is None else o.tensor_type.name)
            print(f"  {n_diff} of {len(b.tensors)} tensors differ")
        return same


def main():
    if len(sys.argv) not in (2, 5) or (len(sys.argv) == 5 and sys.argv[2] != "--same-as"):
        sys.exit(__doc__)
    path = sys.argv[1]
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False, seed=0)
    out = llm.create_completion(PROMPT, max_tokens=16, temperature=0.0, top_k=1)
    text = out["choices"][0]["text"]
    print(f"{os.path.basename(path)}: {PROMPT!r} -> {text!r}")
    if not text.strip():
        sys.exit("FAILED: empty completion")
    ok = True
    if len(sys.argv) == 5:
        ok = compare_with_llama_cpp(path, sys.argv[3], sys.argv[4])
    print("OK" if ok else "LOADS, BUT DIFFERS FROM LLAMA.CPP")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
