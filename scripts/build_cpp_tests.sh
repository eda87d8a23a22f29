#!/usr/bin/env bash
# Build the C++ tests natively (-DBONN_TESTS=ON -DBONN_PYTHON=OFF) and run them once per supported popcount path
# (BONN_POPCOUNT=<path>). --sanitize builds with AddressSanitizer + UBSan in a separate build dir.
# Usage: scripts/build_cpp_tests.sh [--sanitize] [test-name-substring ...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SANITIZE=OFF
BUILD_TYPE=Release
BUILD="$ROOT/build/cpp-tests"
FILTERS=()
for arg in "$@"; do
  case "$arg" in
    --sanitize) SANITIZE=ON; BUILD_TYPE=RelWithDebInfo; BUILD="$ROOT/build/cpp-tests-sanitize" ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) FILTERS+=("$arg") ;;
  esac
done

cmake -S "$ROOT" -B "$BUILD" -DBONN_TESTS=ON -DBONN_PYTHON=OFF -DBONN_SANITIZE="$SANITIZE" \
  -DCMAKE_BUILD_TYPE="$BUILD_TYPE" >/dev/null
cmake --build "$BUILD" -j2 --target bonn_core_tests bonn_microbench

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
PATHS=$(env -u BONN_POPCOUNT "$BUILD/bonn_core_tests" --list-paths)
status=0
for path in $PATHS; do
  echo "=== BONN_POPCOUNT=$path ==="
  if ! BONN_POPCOUNT="$path" "$BUILD/bonn_core_tests" "${FILTERS[@]}"; then
    echo "FAILED on path $path"
    status=1
  fi
done
exit $status
