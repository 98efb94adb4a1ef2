#!/usr/bin/env bash
# `make test-sanitize`: the C++ CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Builds meranet_fast._C with MERANET_SANITIZE=address,undefined (-O1 -g, -fno-sanitize-recover=all;
# setup.py) into build/sanitize, leaving the in-place meranet_fast/_C*.so alone, and runs the CPU op and
# kernel tests against it ($MERANET_EXTENSION_PATH, meranet_fast/_extension.py) with the sanitizer runtimes
# preloaded into the uninstrumented Python. Any report aborts the process and fails the run. The recipe
# and why each option is there: README, "Sanitizers".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CXX=${CXX:-c++}
OUT=build/sanitize

echo "== sanitizer build (address,undefined) in $OUT"
MERANET_SANITIZE=address,undefined MERANET_SKIP_CUDA=1 \
    "$PY" setup.py -q build_ext --build-temp "$OUT/temp" --build-lib "$OUT/lib"
so=$(ls "$OUT"/lib/meranet_fast/_C*.so)
symbols=$(nm -D "$so")
grep -q __asan_report_load <<<"$symbols" || { echo "error: $so has no ASan instrumentation" >&2; exit 1; }
grep -q __ubsan_handle <<<"$symbols" || { echo "error: $so has no UBSan instrumentation" >&2; exit 1; }

# Python is not instrumented: the ASan runtime must be loaded first, so it is preloaded (with UBSan's).
LD_PRELOAD="$("$CXX" -print-file-name=libasan.so):$("$CXX" -print-file-name=libubsan.so)"
export LD_PRELOAD
# detect_leaks=0: CPython and torch keep allocations alive until exit by design (not our leaks).
# detect_odr_violation=0: torch's and Triton's libraries define some globals more than once.
# halt_on_error / abort_on_error: the first report ends the run with a failure.
export ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:halt_on_error=1:abort_on_error=1:${ASAN_OPTIONS_EXTRA:-}
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
export MERANET_EXTENSION_PATH="$PWD/$so"

"$PY" - <<'PY'
import meranet_fast._extension as e
info = e.build_info()
print("meranet_fast._C:", info, "from", e._C.__file__)
assert "sanitize=address,undefined" in info, "the sanitizer build was not the one loaded"
PY

echo "== CPU op and kernel tests under ASan + UBSan"
# gradcheck is left out: it repeats one small shape thousands of times (two thirds of the time under the
# sanitizers), while the other tests and the property tests cover the shapes, strides and dtypes.
"$PY" -m pytest -q -p no:cacheprovider -m "not cuda and not triton and not slow" -k "not gradcheck" \
    tests/test_st_attention.py tests/test_channel_attention.py tests/test_ra_tail.py \
    tests/test_ca_ra_kernels_cpu.py tests/test_properties.py "$@"
