#!/usr/bin/env bash
# The project's test command (README and CI): Python tests, the C++ kernel and graph tests under
# AddressSanitizer + UBSan on every popcount path this CPU has, and the aarch64 kernels under qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENTOML_DO_NOT_TRACK=true
export BENTOML_HOME="${BENTOML_HOME:-$PWD/bentoml_home}"

python -m pytest -m "not slow" -q "$@"
scripts/build_cpp_tests.sh --sanitize
if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then
  scripts/test_aarch64.sh
else
  echo "SKIPPED aarch64 kernel tests: install g++-aarch64-linux-gnu and qemu-user to run them"
fi
