#!/usr/bin/env bash
# Every GPU check in one command, in well under 5 minutes: the CUDA tests (pytest -m gpu: tensors
# on the device, IPC handles, workers pinned to devices, a 1 GB hand-off without a copy, memory
# back after an importer is SIGKILLed, an illegal-address kernel restarting its worker only, a
# peer copy between two GPUs) and then bench/devices.py on cuda:0 (restart with CUDA context
# creation included, hand-off at 1 MB / 100 MB / 1 GB against CuPy's device-to-device copy,
# pinned calls). Run it on a machine with a GPU and CuPy; put the figures in bench/README.md.
#
#     bash bench/gpu_check.sh            # from a checkout where `pip install -e '.[test,gpu]'` ran
#
# On a machine without network access, carry the wheels numbeam needs in .whl/ (see
# bench/README.md, "GPU checks"): the script installs from there when numbeam is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp}

if ! "$PY" -c "import numbeam, pytest_asyncio" 2>/dev/null; then
    if [ -d .whl ]; then
        "$PY" -m pip install -q --no-index --find-links .whl -e '.[test]' || exit 1
    else
        echo "gpu_check: numbeam is not installed and there is no .whl/ to install it from" >&2
        exit 1
    fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import cupy; print('CuPy', cupy.__version__, 'devices:', cupy.cuda.runtime.getDeviceCount())" || exit 1

rc=0
timeout 240 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -o addopts="" \
    2>&1 | tee "$OUT_DIR/gpu_tests.log" || rc=1
timeout 150 "$PY" bench/devices.py --device cuda:0 2>&1 | tee "$OUT_DIR/gpu_bench.log" || rc=1
exit $rc
