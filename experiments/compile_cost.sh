#!/usr/bin/env bash
# What `--compile inductor` costs before its first step, as the run log reports it ("N s to capture
# and compile"): with Inductor's disk cache empty (cold) and then full of that graph (warm, the same
# cache folder again), with Inductor's default compile workers and with one
# (TORCHINDUCTOR_COMPILE_THREADS=1), alternating, over two rounds. Each is a one-epoch
# `pyro-vae train` of the default VAE on 2,000 Fashion-MNIST images at batch 64, one torch thread.
# Run from the repository root with pyro-vae installed: bash experiments/compile_cost.sh
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for round in 1 2; do
    for workers in default 1; do
        dir=$work/$round-$workers
        for cache in cold warm; do
            if [ "$workers" = default ]; then unset TORCHINDUCTOR_COMPILE_THREADS; else export TORCHINDUCTOR_COMPILE_THREADS=1; fi
            seconds=$(TORCHINDUCTOR_CACHE_DIR=$dir/cache OMP_NUM_THREADS=1 pyro-vae train --dataset fashion-mnist \
                --train-size 2000 --epochs 1 --batch-size 64 --compile inductor --tensorboard off \
                --out "$dir/run-$cache" 2>&1 | grep -o '[0-9.]* s to capture and compile' || echo "no compile line")
            echo "round $round, compile workers $workers, cache $cache: $seconds"
        done
    done
done
