#!/usr/bin/env bash
# GPU decode/prefill benchmark against llama.cpp, in one device call (DESIGN.md §6, issue 10
# "Performance"): our `rocmforge bench --device cuda:0` and llama.cpp's `llama-bench` on the same
# synthetic-weight GGUFs, same machine, same run; prints the card and a table last.
#
# Here (dev machine):   scripts/gpu-bench/pack.sh          -> .gpu-carry/bench/
# Device call:          run(command="bash scripts/gpu-bench/run.sh", carry=[".gpu-carry/bench"], timeout_s=600)
#                       (BENCH_ALL=1 bash scripts/gpu-bench/run.sh: also 8B Q8_0 and 1B F16;
#                       fits the time only with a prebuilt llama-bench)
# Then copy $OUT's llama-prebuilt.tar.xz (or .part-*) into .gpu-carry/bench/ and re-run pack.sh:
# later calls skip the llama.cpp build (4-5 min of the 9).
#
# Steps (a failed step leaves its cells empty, never the table):
#   1. unpack rocmforge + plugins and the vocab from .gpu-carry/bench
#   2. in the background (niced): `rocmforge synth` each model into $WORK/models
#   3. llama-bench: the prebuilt if carried, else build llama.cpp (CUDA, sm_90, static, only
#      the llama-bench target) and pack it into $OUT/llama-prebuilt.tar.xz for later calls
#   4. when the build and the models are done, on a quiet machine, per model: llama-bench
#      `-ngl 99 -fa 1 -p 512 -n 128 -r 3 -o json`, then `rocmforge bench --device cuda:0
#      -p 512 -n 128 -r 3 --json`
#   5. table: model, quant, ours/llama.cpp pp512 and tg128 and their ratios
# A time budget (BUDGET_S, default 540 s, inside the device's 600 s) caps every step with
# `timeout`; what does not fit is skipped and reported.
#
# Env: OUT (the device sets it; default /tmp/gpu-bench-out), WORK (default /tmp/gpu-bench),
# BENCH_DIR (default .gpu-carry/bench), MODELS ("SHAPE:TYPE[:N_LAYER] ...", default
# "llama3-8b:q4_k_m llama3.2-1b:q4_k_m"), BENCH_ALL, BUDGET_S, BUILD_MAX_S, JOBS, CMAKE,
# LLAMA_BENCH (use this llama-bench, build nothing), NP/NG/REPS (-p/-n/-r),
# DRY_RUN=1 (no GPU: CPU llama.cpp build, `--device cpu`, `-ngl 0`, a 2-layer SmolLM2-shape
# model, -p 32 -n 8 -r 1; checks every step but the GPU on the dev machine).
# Files in $OUT (at most 8 come back): run.log, results.md, results.json, llama-build.log,
# llama-prebuilt.tar.xz (or up to 4 pieces .part-aa...). QUIET_WAIT_PID: a process to wait for
# before the timed steps.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
BENCH="${BENCH_DIR:-$ROOT/.gpu-carry/bench}"
OUT="${OUT:-/tmp/gpu-bench-out}"
WORK="${WORK:-/tmp/gpu-bench}"
DRY="${DRY_RUN:-}"
JOBS="${JOBS:-$(nproc)}"
T0=$(date +%s)
if [[ -n "$DRY" ]]; then
    BUDGET="${BUDGET_S:-7200}" BUILD_MAX_S="${BUILD_MAX_S:-5400}"
    NP="${NP:-32}" NG="${NG:-8}" REPS="${REPS:-1}" DEVICE="${DEVICE:-cpu}" NGL=0
    DEFAULT_MODELS="smollm2-135m:q4_k_m:2"
else
    BUDGET="${BUDGET_S:-540}" BUILD_MAX_S="${BUILD_MAX_S:-420}"
    NP="${NP:-512}" NG="${NG:-128}" REPS="${REPS:-3}" DEVICE="${DEVICE:-cuda:0}" NGL=99
    DEFAULT_MODELS="llama3-8b:q4_k_m llama3.2-1b:q4_k_m"
    [[ -n "${BENCH_ALL:-}" ]] && DEFAULT_MODELS+=" llama3-8b:q8_0 llama3.2-1b:f16"
fi
MODELS="${MODELS:-$DEFAULT_MODELS}"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$PATH:/usr/local/cuda/bin"
export ROCMFORGE_KERNEL_CACHE="${ROCMFORGE_KERNEL_CACHE:-/tmp/rfk}"
RF="$WORK/rf/rocmforge"
LB="${LLAMA_BENCH:-$WORK/llama/bin/llama-bench}"
mkdir -p "$OUT" "$WORK/models" "$WORK/res"
rm -f "$WORK/res/"*  # results of an earlier call on a warm machine (models are kept)

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
log() { echo "[$(elapsed)s] $*"; }
# min(want, time left - reserve): a step's timeout; 0 = no time for it.
cap() {
    local want=$1 reserve=${2:-20} l
    l=$(( $(left) - reserve ))
    (( l < 5 )) && { echo 0; return; }
    echo $(( want < l ? want : l ))
}

# xz through the xz tool, or Python's lzma where the machine has no xz.
unpack_xz() { # DIR PIECE... : the concatenated pieces are one .tar.xz
    local dir=$1; shift
    mkdir -p "$dir"
    if command -v xz >/dev/null; then
        cat "$@" | xz -dc | tar -xf - -C "$dir"
    else
        cat "$@" | python3 -c 'import sys, tarfile
t = tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz")
t.extractall(sys.argv[1], **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))' "$dir"
    fi
}
xz_file() { # SRC DEST
    if command -v xz >/dev/null; then
        xz -T0 -dc "$1" > "$2"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
    fi
}
# -6, not -9: -9's 192 MiB blocks would put a ~50 MB binary on one thread for a minute.
xz_stdin() { # DEST
    if command -v xz >/dev/null; then xz -T0 -6 > "$1"; else python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.compress(sys.stdin.buffer.read(), preset=6))' > "$1"; fi
}

# A model spec SHAPE:TYPE[:N_LAYER] -> its file.
model_file() {
    local shape ty nl
    IFS=: read -r shape ty nl <<< "$1"
    echo "$WORK/models/$shape-$ty${nl:+-l$nl}.gguf"
}
key_of() { basename "$(model_file "$1")" .gguf; }

synth_all() {
    local m shape ty nl f s t args
    for m in $MODELS; do
        IFS=: read -r shape ty nl <<< "$m"
        f=$(model_file "$m")
        if [[ -s "$f" ]]; then log "synth $m: $f exists (kept from an earlier call)"; continue; fi
        args=(synth --shape "$shape" --type "$ty" --vocab "$WORK/vocab.gguf" "$f")
        [[ -n "$nl" ]] && args+=(--n-layer "$nl")
        s=$(date +%s) t=$(cap 300 60)
        (( t > 0 )) || { log "synth $m: no time left"; continue; }
        if timeout "$t" "$RF" "${args[@]}"; then log "synth $m: $(( $(date +%s) - s )) s"; else log "synth $m: FAILED"; fi
    done
}

# llama.cpp from the carried sources: static (one binary; CUDA's own libraries come from
# /usr/local/cuda/lib64 at run time), only the llama-bench target, flags as perf.md §10. CPU code
# built for AVX2 rather than -march=native, so the prebuilt runs on whatever host the next call
# gets. The server (and its web UI download) and the app are off; tests and examples too.
build_llama() {
    local src_tar="$BENCH/llama.cpp-src.tar.xz" b="$WORK/llama-build" t cmake_bin gen=() gpu s
    [[ -f "$src_tar" ]] || { log "no llama.cpp sources ($src_tar): run pack.sh without a prebuilt or with WITH_SRC=1"; return 1; }
    unpack_xz "$WORK/llama-src" "$src_tar" || { log "unpacking $src_tar failed"; return 1; }
    cmake_bin="${CMAKE:-cmake}"
    command -v ninja >/dev/null && gen=(-G Ninja)
    if [[ -n "$DRY" ]]; then
        gpu=(-DGGML_CUDA=OFF)
    else
        gpu=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NCCL=OFF)
        [[ -x /usr/local/cuda/bin/nvcc ]] && gpu+=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
    fi
    s=$(date +%s)
    "$cmake_bin" -S "$WORK/llama-src/llama.cpp" -B "$b" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        "${gpu[@]}" -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        >> "$WORK/llama-build.log" 2>&1 || { log "llama.cpp: cmake configure failed (llama-build.log)"; return 1; }
    # The models are written meanwhile; the benchmarks wait for both. Leave them ~3 min.
    t=$(cap "$BUILD_MAX_S" 180)
    (( t > 0 )) || { log "llama.cpp: no time left to build"; return 1; }
    log "llama.cpp: configured in $(( $(date +%s) - s )) s; building llama-bench (-j $JOBS, at most $t s)"
    timeout "$t" "$cmake_bin" --build "$b" --target llama-bench -j "$JOBS" >> "$WORK/llama-build.log" 2>&1 \
        || { log "llama.cpp: build failed or timed out (llama-build.log)"; return 1; }
    log "llama.cpp: built in $(( $(date +%s) - s )) s"
    mkdir -p "$WORK/llama/bin"
    cp "$b/bin/llama-bench" "$WORK/llama/bin/" && strip "$WORK/llama/bin/llama-bench" 2>/dev/null
    {
        echo "llama-bench built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - s )) s by scripts/gpu-bench/run.sh"
        echo "source: $(head -n 3 "$BENCH/BUILD_INFO" 2>/dev/null | tail -n 1)"
        echo "cmake: ${gpu[*]} -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF (AVX2/FMA/F16C/BMI2)"
        command -v nvcc >/dev/null && nvcc --version | tail -n 2
        ldd "$WORK/llama/bin/llama-bench"
    } > "$WORK/llama/BUILD_INFO" 2>&1
}

# $WORK/llama -> $OUT/llama-prebuilt.tar.xz, in 15 MiB pieces if over the 16 MiB a returned
# file may have (4 pieces at most: 8 files come back in all). SPLIT_MIB / MAX_FILE_MIB exist to
# test the splitting with a small file.
pack_prebuilt() {
    local f="$OUT/llama-prebuilt.tar.xz" n piece=${SPLIT_MIB:-15} max=${MAX_FILE_MIB:-16}
    tar -C "$WORK" -cf - llama | xz_stdin "$f" || { log "packing llama-bench failed"; return 1; }
    n=$(wc -c < "$f")
    if (( n > max * 1048576 - 4096 )); then
        if (( n > 4 * piece * 1048576 )); then
            log "llama-prebuilt: $n bytes, too big to bring back (4 x $piece MiB); not returned"
            rm -f "$f"
            return 1
        fi
        split -b "${piece}M" "$f" "$f.part-" && rm -f "$f"
        log "llama-prebuilt: $n bytes in $(ls "$f".part-* | wc -l) pieces: copy $OUT/llama-prebuilt.tar.xz.part-* into .gpu-carry/bench/"
    else
        log "llama-prebuilt: $n bytes: copy $f into .gpu-carry/bench/"
    fi
}

# A prebuilt llama-bench from an earlier call, if carried and runnable here.
use_prebuilt() {
    local pieces=()
    if [[ -f "$BENCH/llama-prebuilt.tar.xz" ]]; then
        pieces=("$BENCH/llama-prebuilt.tar.xz")
    else
        mapfile -t pieces < <(ls "$BENCH"/llama-prebuilt.tar.xz.part-* 2>/dev/null | sort)
    fi
    (( ${#pieces[@]} > 0 )) || return 1
    unpack_xz "$WORK" "${pieces[@]}" || { log "llama-prebuilt: unpacking failed"; return 1; }
    if ldd "$LB" 2>&1 | grep -q "not found"; then
        log "llama-prebuilt: missing libraries: $(ldd "$LB" | grep 'not found' | tr '\n' ' ')"
        return 1
    fi
    log "llama-prebuilt: $(head -n 1 "$WORK/llama/BUILD_INFO" 2>/dev/null)"
}

bench_one() { # SPEC
    local m=$1 f k t
    f=$(model_file "$m")
    k=$(key_of "$m")
    [[ -s "$f" ]] || { log "$m: no model file, skipped"; return; }
    if [[ -x "$LB" ]]; then
        t=$(cap 240)
        if (( t > 0 )); then
            log "$m: llama-bench (at most $t s)"
            timeout "$t" "$LB" -m "$f" -ngl "$NGL" -fa 1 -p "$NP" -n "$NG" -r "$REPS" -o json \
                > "$WORK/res/$k.llama.json" 2> "$WORK/res/$k.llama.err" || { log "$m: llama-bench failed:"; tail -n 15 "$WORK/res/$k.llama.err"; }
            cat "$WORK/res/$k.llama.json"
        else
            log "$m: no time left for llama-bench"
        fi
    fi
    t=$(cap 240)
    if (( t > 0 )); then
        log "$m: rocmforge bench --device $DEVICE (at most $t s)"
        timeout "$t" "$RF" bench "$f" --device "$DEVICE" -p "$NP" -n "$NG" -r "$REPS" --json \
            > "$WORK/res/$k.ours.json" 2> "$WORK/res/$k.ours.err" || { log "$m: rocmforge bench failed:"; tail -n 15 "$WORK/res/$k.ours.err"; }
        cat "$WORK/res/$k.ours.json"
    else
        log "$m: no time left for rocmforge bench"
    fi
}

table() {
    python3 - "$WORK/res" "$OUT" "$CARD" "$NP" "$NG" $MODELS <<'PYEOF'
import json, os, sys
res, out, card, np_, ng = sys.argv[1:6]
specs = sys.argv[6:]

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return None

rows, raw = [], []
for spec in specs:
    shape, ty, *nl = spec.split(":")
    key = f"{shape}-{ty}" + (f"-l{nl[0]}" if nl else "")
    ours, theirs = load(f"{res}/{key}.ours.json"), load(f"{res}/{key}.llama.json")
    o = {r["test"]: r["t/s"] for r in (ours or {}).get("results", [])}
    l = {}
    for r in theirs or []:
        if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
            l[f"pp{r['n_prompt']}"] = r["avg_ts"]
        elif r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
            l[f"tg{r['n_gen']}"] = r["avg_ts"]
    pp, tg = f"pp{np_}", f"tg{ng}"
    size = theirs[0].get("model_size") if theirs else None
    rows.append((shape + (f" (n_layer {nl[0]})" if nl else ""), ty.upper(), o.get(pp), l.get(pp), o.get(tg), l.get(tg)))
    raw.append({"model": shape, "quant": ty.upper(), "n_layer_override": int(nl[0]) if nl else None, "bytes": size,
                "ours": ours, "llama_cpp": theirs})

f = lambda x: "-" if x is None else f"{x:,.1f}"
ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}x"
lines = [f"card: {card}", "",
         f"| model | quant | ours pp{np_} | llama.cpp pp{np_} | ratio | ours tg{ng} | llama.cpp tg{ng} | ratio |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
for name, q, opp, lpp, otg, ltg in rows:
    lines.append(f"| {name} | {q} | {f(opp)} | {f(lpp)} | {ratio(opp, lpp)} | {f(otg)} | {f(ltg)} | {ratio(otg, ltg)} |")
backends = sorted({(r["ours"] or {}).get("backend", "?") for r in raw if r["ours"]})
lines += ["", f"t/s; ours: rocmforge bench ({', '.join(backends) or 'no result'}); llama.cpp: llama-bench -fa 1; ratio = ours / llama.cpp"]
text = "\n".join(lines)
print(text)
with open(os.path.join(out, "results.md"), "w") as fh:
    fh.write(text + "\n")
with open(os.path.join(out, "results.json"), "w") as fh:
    json.dump({"card": card, "n_prompt": int(np_), "n_gen": int(ng), "models": raw}, fh, indent=1)
PYEOF
}

main() {
    log "gpu-bench: models: $MODELS; -p $NP -n $NG -r $REPS; device $DEVICE; budget ${BUDGET} s${DRY:+ (DRY RUN)}"
    if [[ -n "$DRY" ]]; then
        CARD="none (dry run on $(uname -n), CPU)"
    else
        CARD=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
        [[ -n "$CARD" ]] || CARD="unknown (nvidia-smi gave nothing)"
    fi
    log "card: $CARD"

    # 1. Our binary, plugins, vocab.
    local have_rf=""
    if unpack_xz "$WORK/rf" "$BENCH/rocmforge.tar.xz" && "$RF" --version; then
        have_rf=1
    else
        log "no runnable rocmforge in $BENCH/rocmforge.tar.xz: run scripts/gpu-bench/pack.sh"
    fi
    [[ -s "$WORK/vocab.gguf" ]] || xz_file "$BENCH/vocab-llama-bpe.gguf.xz" "$WORK/vocab.gguf" || log "no vocab"

    # 2. Models, in the background while llama.cpp builds (niced: the build is the long pole).
    local synth_pid=""
    if [[ -n "$have_rf" ]]; then
        ( renice -n 10 -p "$BASHPID" > /dev/null; synth_all ) > "$WORK/synth.log" 2>&1 &
        synth_pid=$!
    fi

    # 3. llama-bench.
    if [[ -n "${LLAMA_BENCH:-}" ]]; then
        log "llama-bench: $LB (LLAMA_BENCH)"
    elif use_prebuilt; then
        :
    elif build_llama; then
        pack_prebuilt
    fi
    [[ -f "$WORK/llama-build.log" ]] && tail -c 2000000 "$WORK/llama-build.log" > "$OUT/llama-build.log"
    [[ -x "$LB" ]] || log "no llama-bench: llama.cpp columns stay empty"

    # 4. Benchmarks on a quiet machine: the models written, and the process QUIET_WAIT_PID (all.sh's
    #    GPU tests) finished.
    if [[ -n "$synth_pid" ]]; then
        log "waiting for the models"
        wait "$synth_pid"
        cat "$WORK/synth.log"
    fi
    if [[ -n "${QUIET_WAIT_PID:-}" ]] && kill -0 "$QUIET_WAIT_PID" 2>/dev/null; then
        log "waiting for process $QUIET_WAIT_PID (GPU tests) to finish"
        while kill -0 "$QUIET_WAIT_PID" 2>/dev/null; do sleep 1; done
    fi
    if [[ -n "$have_rf" ]]; then
        for m in $MODELS; do bench_one "$m"; done
    fi

    # 5. The table, last.
    log "done in $(elapsed) s"
    echo
    table
}

main 2>&1 | tee "$OUT/run.log"
