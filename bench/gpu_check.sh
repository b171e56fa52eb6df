#!/usr/bin/env bash
# The GPU checks of the speed issue, as one prepared script for a lent H100/H200:
#   run from the repo root; writes figures to ${OUT:-bench/out}.
# Budget: about 12 minutes (the data-path check (4) takes 4, the data-parallel check (5) up to
# 2). The machine's own python3 has torch/torchvision; fer_core's other imports
# (facenet-pytorch, pyarrow) are only needed for backbones/paths not run here.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" | tee -a "$OUT/device.txt"
# (1) Inception-v3 @299, batch 32: usual pipeline vs fast path vs compute bound.
timeout 180 python3 bench/throughput.py --backbone inception_v3 --size 299 --batch 32 \
    --steps 60 --images 1024 --workers 8 --json "$OUT/inception_v3.json" 2>&1 | tee "$OUT/throughput.log"
# (2) ResNet-18 @224 for the same three figures.
timeout 90 python3 bench/throughput.py --backbone resnet18 --size 224 --batch 32 \
    --steps 60 --images 1024 --workers 8 --json "$OUT/resnet18.json" 2>&1 | tee -a "$OUT/throughput.log"
# (3) Packing: k units on one GPU, utilisation sampled with nvidia-smi.
timeout 150 python3 bench/packing.py --backbone inception_v3 --size 299 --packs 1 2 4 \
    --json "$OUT/packing.json" 2>&1 | tee "$OUT/packing.log"
# (4) Data path at scale: 200k crops @112 as JPEGs + PIL vs the on-disk crop store (batches
# moved to the GPU; b+aug augments there) vs copying a ready batch; ~7.5 GB under /tmp,
# deleted at the end. About 4 minutes, most of it writing the store.
timeout 330 python3 bench/data_path.py --n 200000 --size 112 --workers 8 --device cuda \
    --dir /tmp/data-path-bench --json "$OUT/data_path.json" 2>&1 | tail -25 | tee "$OUT/data_path.log"
# (5) Data-parallel scaling (D-24): ResNet-18 @224, global batch 256, 1 rank vs every GPU
# of the machine (NCCL); goal >= 85 % efficiency at 2-8 GPUs. About 1-2 minutes.
GPUS=$(nvidia-smi --list-gpus | wc -l)
PROCS="1"; for n in 2 4 8; do [ "$n" -le "$GPUS" ] && PROCS="$PROCS $n"; done
timeout 240 python3 bench/data_parallel.py --device cuda --backbone resnet18 --size 224 \
    --batch 256 --images 8192 --select 256 --epochs 2 --threads 4 --procs $PROCS \
    --json "$OUT/data_parallel.json" 2>&1 | grep -v "^process group" | tee "$OUT/data_parallel.log"
