#!/usr/bin/env bash
# Build the carry folder a GPU call needs to serve and benchmark `generate` (run here, with network):
#   bash bench/gpu_wheels.sh .whl3     # then name .whl3 in the device call's `carry`
# The GPU machine has no tritonserver, tritonclient or perf_analyzer and has numpy 2. Everything must fit
# in one 64 MiB carry, so the nvidia-pytriton wheel (55 MB) is repacked without what a Python 3.12 server
# does not use: the libpython3.13 copy and the other Pythons' backend stubs (27 MB as .txz).
# On the GPU machine:
#   mkdir -p /tmp/site /tmp/np1 && tar xJf .whl3/pytriton-min.txz -C /tmp/site
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl3/perf_analyzer*.whl \
#       .whl3/tritonclient*.whl .whl3/python_rapidjson*.whl .whl3/protobuf*.whl
#   python3 -m pip install -q --no-index --no-deps --target /tmp/np1 .whl3/numpy*.whl
#   export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH     # the bench takes --server-pythonpath /tmp/np1
# The backend stub ignores PYTHONPATH (seen there: numpy 2.5.2 with /tmp/np1 first on it). --server-pythonpath
# makes a venv whose .pth puts /tmp/np1 before the serving Python's packages and starts the server with
# STUB_PYTHON pointing at it (llmprofiles.serving.launcher.overlay_python).
set -euo pipefail
out=${1:-.whl3}
mkdir -p "$out"
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "$@" -d "$out"; }
# tritonclient's gRPC client needs python-rapidjson, and its generated code protobuf >= 6.33.5.
dl --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
   numpy==1.26.4 tritonclient==2.73.0 protobuf==6.33.5 python-rapidjson==1.25
dl --platform manylinux_2_38_x86_64 perf-analyzer==2.60.0
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_35_x86_64 -d "$tmp" nvidia-pytriton==0.7.0
(cd "$tmp" && mkdir site && cd site && unzip -q ../nvidia_pytriton-*.whl \
    && rm -f nvidia_pytriton.libs/libpython3-*.13.so.* \
    && find pytriton/tritonserver/python_backend_stubs -mindepth 1 -maxdepth 1 ! -name 3.12 -exec rm -rf {} + \
    && tar cJf "$OLDPWD/pytriton-min.txz" .)
mv "$tmp/pytriton-min.txz" "$out/"
rm -rf "$tmp"
du -sh "$out"
