#!/usr/bin/env bash
# Run HERE (a machine with pip access) before a GPU call: downloads, into .whl/ (git-ignored), the wheels the GPU
# image lacks for the tests and the model suite (device README: Python 3.12, no network; see KINDS.md's package list):
# ultralytics at the version installed here, ultralytics-thop, setuptools, and polars (ultralytics' trainer saves results with it;
# about 55 MB with its runtime: leave it out with NO_POLARS=1 to keep the carry small). Then name ".whl" in the call's
# carry; run_gpu.sh installs them offline with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ver() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
# setuptools: pyproject.toml's SPDX license field needs >= 77, and the image's version is not known
pkgs=("ultralytics==$(ver ultralytics)" "ultralytics-thop==$(ver ultralytics-thop)" "setuptools==$(ver setuptools)")
if [ -z "${NO_POLARS:-}" ]; then
    pkgs+=("polars==$(ver polars)")
    $PY -c "import importlib.metadata as m; m.version('polars-runtime-32')" 2>/dev/null \
        && pkgs+=("polars-runtime-32==$(ver polars-runtime-32)")
fi
rm -rf .whl && mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pkgs[@]}"
ls -la .whl
echo "total: $(du -sh .whl | cut -f1) (the carry limit is 64 MiB with the working tree)"
