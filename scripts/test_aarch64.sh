#!/usr/bin/env bash
# Cross-compile the kernel tests for aarch64 (aarch64-linux-gnu-g++) and run them under qemu-user, once per
# aarch64 popcount path (neon, portable).
# Usage: scripts/test_aarch64.sh [test-name-substring ...]   (default: the kernel and graph tests)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD="$ROOT/build/cpp-tests-aarch64"
SYSROOT=/usr/aarch64-linux-gnu
command -v aarch64-linux-gnu-g++ >/dev/null || { echo "aarch64-linux-gnu-g++ not found"; exit 2; }
command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 not found"; exit 2; }
FILTERS=("$@")
[ ${#FILTERS[@]} -eq 0 ] && FILTERS=(bconv pack threadpool fconv maxpool elementwise graph)

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_FIND_ROOT_PATH="$SYSROOT" \
  -DBONN_TESTS=ON -DBONN_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j2 --target bonn_core_tests bonn_microbench

run() { qemu-aarch64 -L "$SYSROOT" "$@"; }
PATHS=$(env -u BONN_POPCOUNT qemu-aarch64 -L "$SYSROOT" "$BUILD/bonn_core_tests" --list-paths)
echo "aarch64 paths: $PATHS"
status=0
for path in $PATHS; do
  echo "=== qemu-aarch64 BONN_POPCOUNT=$path ==="
  if ! BONN_POPCOUNT="$path" run "$BUILD/bonn_core_tests" "${FILTERS[@]}"; then
    echo "FAILED on path $path"
    status=1
  fi
done
# The microbenchmark must at least run (numbers under emulation are meaningless).
run "$BUILD/bonn_microbench" --suites wrn22-16 --threads 1 --repeats 1 --peak-seconds 0.01 >/dev/null || status=1
exit $status
