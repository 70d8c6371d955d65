#!/usr/bin/env bash
# Compile-only check of every GPU kernel in kernels/, without a GPU (DESIGN.md decision 4):
#   - NVIDIA: NVRTC 13 from the PyPI wheel nvidia-cuda-nvrtc (cached in .cache/nvrtc, ~90 MB
#     once), for sm_90 and sm_80;
#   - AMD: hipRTC from Debian's libamdhip64-5 (5.2.3) when installed (apt-get install
#     libamdhip64-dev), for gfx90a (wave64) and gfx1030 (wave32).
# A missing compiler is a skip with a note, unless ROCMFORGE_REQUIRE_RTC=1 (then it fails).
# Separate from scripts/test.sh on purpose: it downloads a wheel and takes ~30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
NVRTC_VERSION="${NVRTC_VERSION:-13.0.88}"
dir=.cache/nvrtc/$NVRTC_VERSION
if [ ! -e "$dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  mkdir -p "$dir"
  if python3 -m pip download -q --no-deps --only-binary=:all: "nvidia-cuda-nvrtc==$NVRTC_VERSION" -d "$dir" >/dev/null 2>&1; then
    python3 -c "import zipfile,glob,sys; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(sys.argv[1]+'/*.whl')]" "$dir"
  else
    echo "check-kernels: could not download nvidia-cuda-nvrtc==$NVRTC_VERSION (no network?)" >&2
  fi
fi
targets=()
if [ -e "$dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  lib=$(cd "$dir/nvidia/cu13/lib" && pwd)
  export ROCMFORGE_NVRTC_LIB="$lib/libnvrtc.so.13" LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  targets+=(cuda:sm_90:32 cuda:sm_80:32)
fi
# (grep reads all of the list: with pipefail, `grep -q` could SIGPIPE ldconfig and skip AMD.)
if ldconfig -p 2>/dev/null | grep libamdhip64 >/dev/null; then
  targets+=(hip:gfx90a:64 hip:gfx1030:32)
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "check-kernels: no NVRTC or hipRTC available" >&2
  [ "${ROCMFORGE_REQUIRE_RTC:-}" = 1 ] && exit 1
  exit 0
fi
cargo run -q -p rocmforge-gpu --example check_kernels -- "${targets[@]}"
