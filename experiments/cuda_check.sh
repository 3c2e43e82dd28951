#!/usr/bin/env bash
# Issue 16's CUDA measurement as one prepared command, for a machine with an NVIDIA GPU (written
# before one was lent to this project: not yet run). It times, in one process per mode, fit with
# the captured step (`--compile on`) and with Inductor (`--compile inductor`) beside fit's eager
# step, the hand-written loop on the same networks and Pyro's textbook SVI loop (benchmark.py's
# columns), for the 784-400-50 VAE at batch 256 and 64, and names the GPU. Steps per second are
# the steps of an epoch (211 at batch 256, 844 at 64) over its seconds.
#
# On this project's device machine (python3 there holds CUDA torch; pyro-ppl is not installed and
# nothing can be fetched), prepare here, in the repository root:
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
# then run `bash experiments/cuda_check.sh` there with carry [".whl", ".data"]; the tables land in $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/cuda-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
[ -d .data ] && export PYRO_VAE_DATA=$PWD/.data
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"
for mode in on inductor; do
    timeout 280 python3 experiments/benchmark.py --models vae --batches 256,64 --epochs 4 --compile "$mode" \
        --no-numpyro 2>&1 | grep -v Warning | tee "$OUT/benchmark-compile-$mode.txt" || true
done
