#!/usr/bin/env python3
"""llama.cpp's pp/tg throughput on a GGUF through llama-cpp-python, measured like `rocmforge bench`
(and llama-bench): ppN = one N-token prompt from an empty cache, tgN = N single-token steps,
random token ids, one warm-up then REPS runs. Prints one JSON line.

usage: llama_cpp_bench.py MODEL.gguf [N_PROMPT] [N_GEN] [REPS] [THREADS]
"""
import json, random, statistics, sys, time
import llama_cpp

path = sys.argv[1]
n_prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 512
n_gen = int(sys.argv[3]) if len(sys.argv) > 3 else 128
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
llm = llama_cpp.Llama(model_path=path, n_ctx=n_prompt + n_gen + 16, n_batch=max(n_prompt, 1), n_ubatch=max(n_prompt, 1),
                      n_threads=threads, n_threads_batch=threads, verbose=False)
rng = random.Random(1)
nv = llm.n_vocab()
res = []
if n_prompt:
    toks = [rng.randrange(nv) for _ in range(n_prompt)]
    rates = []
    for i in range(reps + 1):
        llm.reset(); llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter(); llm.eval(toks); dt = time.perf_counter() - t0
        if i: rates.append(n_prompt / dt)
    res.append({"test": f"pp{n_prompt}", "t/s": statistics.mean(rates), "stddev": statistics.stdev(rates) if len(rates) > 1 else 0})
if n_gen:
    toks = [rng.randrange(nv) for _ in range(n_gen)]
    rates = []
    for i in range(reps + 1):
        llm.reset(); llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        for t in toks:
            llm.eval([t])
        dt = time.perf_counter() - t0
        if i: rates.append(n_gen / dt)
    res.append({"test": f"tg{n_gen}", "t/s": statistics.mean(rates), "stddev": statistics.stdev(rates) if len(rates) > 1 else 0})
print(json.dumps({"model": path, "backend": "llama.cpp CPU (llama-cpp-python %s)" % llama_cpp.__version__, "threads": threads, "results": res}))
