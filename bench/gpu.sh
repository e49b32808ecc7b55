#!/usr/bin/env bash
# The speed table on a CUDA GPU, and DDP with NCCL when the machine has more than one GPU.
#
#   bash bench/gpu.sh            from the repository root, with a CUDA build of torch
#   bash bench/gpu.sh --quick    smoke test: digits, seconds per case
#
# 1. bench/speed.py on cuda: seed-vae, seed-gan, conv-vae, dcgan at batch 128 and 512 in fp32,
#    bf16, fp16 (a GradScaler per optimizer) and compile -> bench/results/speed-cuda.json.
# 2. With N > 1 GPUs: `genlab train MODEL` under `torchrun --nproc-per-node N` (NCCL, one GPU per
#    process, --batch-size = the batch of all N processes together) against one process with the
#    same global batch, 1 minute of training time each; median images/s of the metrics.jsonl
#    windows after the first -> bench/results/ddp-cuda.json.
#
# Environment: PYTHON (default .venv/bin/python), MODELS (default "seed-vae seed-gan conv-vae dcgan"),
# DEVICE=cpu NPROC=2 to dry-run the script on a CPU machine (gloo instead of NCCL, no fp16),
# TABLE=0 to skip part 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-seed-vae seed-gan conv-vae dcgan}
QUICK=${1:-}
TABLE=${TABLE:-1}

if [ "$DEVICE" = cuda ]; then
  "$PY" -c "
import sys, torch
if not torch.cuda.is_available():
    sys.exit('bench/gpu.sh: torch ' + torch.__version__ + ' sees no CUDA GPU; nothing to measure')
print(f'torch {torch.__version__}: {torch.cuda.device_count()} x {torch.cuda.get_device_name()}')"
  MODES=fp32,bf16,fp16,compile
  NPROC=${NPROC:-$("$PY" -c "import torch; print(torch.cuda.device_count())")}
else
  MODES=fp32,bf16,compile
  NPROC=${NPROC:-1}
fi
MODEL_LIST=$(echo "$MODELS" | tr ' ' ',')

if [ "$QUICK" = "--quick" ]; then
  [ "$TABLE" = 0 ] || "$PY" bench/speed.py --quick --device "$DEVICE" --models "$MODEL_LIST" --modes "$MODES" \
      --out "bench/out/speed-$DEVICE-quick.json"
  MINUTES=0.05; DATA=digits; BATCH=128; RESULTS=bench/out
else
  [ "$TABLE" = 0 ] || "$PY" bench/speed.py --device "$DEVICE" --threads "$(nproc)" --models "$MODEL_LIST" \
      --modes "$MODES" --out "bench/results/speed-$DEVICE.json"
  MINUTES=1; DATA=fashion-mnist; BATCH=512; RESULTS=bench/results
fi

if [ "$NPROC" -lt 2 ]; then
  echo "one device: no DDP measurement (it needs at least two processes)"
  exit 0
fi

OUT=$(mktemp -d)
for model in $MODELS; do
  for n in 1 "$NPROC"; do
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$n" -m genlab train "$model" --data "$DATA" \
        --batch-size "$BATCH" --epochs 100000 --max-minutes "$MINUTES" --device "$DEVICE" --out "$OUT/$model-$n" \
        --no-progress > "$OUT/$model-$n.log" 2>&1 || { cat "$OUT/$model-$n.log"; exit 1; }
  done
done

"$PY" - "$OUT" "$NPROC" "$DATA" "$BATCH" "$DEVICE" "$RESULTS" $MODELS <<'EOF'
import json, statistics, sys
from pathlib import Path
out, nproc, data, batch, device, results, models = (Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                                   int(sys.argv[4]), sys.argv[5], Path(sys.argv[6]), sys.argv[7:])
print(f"\nDDP on {device}: {nproc} processes vs 1, global batch {batch}, {data}\n")
print(f"| model | global batch | 1 process img/s | {nproc} processes img/s | scaling |")
print("|---|---:|---:|---:|---:|")
rows = []
for model in models:
    rates = {}
    for n in (1, nproc):
        lines = [json.loads(l) for l in (out / f"{model}-{n}" / "metrics.jsonl").read_text().splitlines()]
        windows = [l["img_per_s"] for l in lines if "img_per_s" in l]
        windows = windows[1:] or windows  # the first window warms up
        rates[n] = statistics.median(windows)
    rows.append({"model": model, "global_batch": batch, "img_per_s_1": rates[1], f"img_per_s_{nproc}": rates[nproc],
                 "scaling": rates[nproc] / rates[1]})
    print(f"| {model} | {batch} | {rates[1]:,.0f} | {rates[nproc]:,.0f} | {rates[nproc] / rates[1]:.2f}x |")
results.mkdir(parents=True, exist_ok=True)
path = results / f"ddp-{device}.json"
path.write_text(json.dumps({"data": data, "device": device, "processes": nproc, "rows": rows}, indent=2) + "\n")
print(f"\n(written to {path})")
EOF
