#!/usr/bin/env bash
# The one prepared command for a session that is lent a GPU machine (the device tool), which has
# PyTorch and ONNX Runtime but neither GDAL nor QGIS nor a network. It measures what needs the GPU
# (tools/bench_device.py: issue 12's CUDA figures) and trains the general model for a few minutes
# there (tools/make_model.py on CUDA, batches made by 12 processes: issue 8's many steps). Prepare
# here with `make gpu-kit` (the real pairs, GDAL needed; and an earlier GPU session's state, if any),
# then call the device tool's run with
#   command: bash tools/gpu_session.sh MINUTES [tools/make_model.py arguments of the stage]
#   carry: ["build/gpu_kit"], timeout_s: 600 (MINUTES 7 leaves time for the start and the speed figures)
# What comes back ($OUT, at most 8 files): device.txt, speed.jsonl, train.log, training_log.json,
# state.pt (weights and Adam: copy to build/gpu_kit/ to go on next time), final.pt and the last two
# stepN.pt candidates. Here: put each .pt in its own folder as despecknet.pt, export it with
# `tools/make_model.py --export FOLDER` and score it with `tools/bench_quality.py --candidate`.
set -u
out=${OUT:-build/gpu_out}
mkdir -p "$out"
minutes=${1:-7}
shift || true
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}  # DEVICE=cpu checks the script on a machine without a GPU
export PYTHONUNBUFFERED=1
nvidia-smi -L >"$out/device.txt" 2>&1
timeout 150 "$py" tools/bench_device.py --device "$dev" ${BENCH_DEVICE_ARGS:-} >"$out/speed.jsonl" 2>&1
state=build/gpu_state.pt
rm -rf build/gpu_model "$state"
if [ -f build/gpu_kit/state.pt ]; then cp build/gpu_kit/state.pt "$state"; fi
"$py" tools/make_model.py --device "$dev" --minutes "$minutes" --no-onnx --data-workers "${WORKERS:-12}" \
  --real-cache build/gpu_kit/real_pairs.npz --state "$state" --candidate-dir build/gpu_model \
  --candidate-every "${CANDIDATE_EVERY:-2000}" --save-every 500 "$@" >"$out/train.log" 2>&1
cp "$state" "$out/state.pt"
cp build/gpu_model/despecknet.pt "$out/final.pt"
cp build/gpu_model/training_log.json "$out/"
for d in $(ls -d build/gpu_model/step* 2>/dev/null | sort -V | tail -2); do
  cp "$d/despecknet.pt" "$out/$(basename "$d").pt"
done
tail -3 "$out/train.log"
