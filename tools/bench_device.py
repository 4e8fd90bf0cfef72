"""Network speed on an accelerator: what despeckle, train and finetune cost there, GDAL left out.

For a lent GPU machine (tools/gpu_session.sh), which has PyTorch and ONNX Runtime but no GDAL
or QGIS: the whole `make bench` cannot run there, so this times the parts that need the GPU and
prints one JSON line per figure:
- despeckle's network through ONNX Runtime (core/inference.Despeckler, the plugin's own path),
  with the CUDA provider where this ONNX Runtime has it, on square tiles; the seconds per Mpixel
  give a 400 Mpixel GRD band's network time (the I/O is measured by `make bench` on a CPU);
- the same network in PyTorch on the device, fp32 (TF32 allowed) and bf16 autocast;
- one training step (core/training.Trainer) at make_model's batch (50 of 64x64) and at phase 2's
  (128 of 40x40; core/defaults.PHASE2_TRAINING), and what phase 2's default epoch costs per Mpixel.

    python3 tools/bench_device.py                 # on the GPU machine
    .venv/bin/python tools/bench_device.py --device cpu --quick   # here, to check the script
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from despecknet_qgis.core.defaults import PHASE2_TRAINING  # noqa: E402
from despecknet_qgis.core.losses import PHASE1_BUNDLED  # noqa: E402
from despecknet_qgis.core.training import Trainer, load_checkpoint  # noqa: E402

GRD_BAND_MPIXEL = 400.0  # a Sentinel-1 IW GRD band, about 25000 x 16700


def report(**figures) -> None:
    print(json.dumps(figures), flush=True)


def timed(run, repeats: int, sync) -> float:
    run()  # warm-up: kernels chosen, memory allocated
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the GPU machine) or cpu (to check the script)")
    ap.add_argument("--tile", type=int, default=2048, help="side of the square tiles timed")
    ap.add_argument("--quick", action="store_true", help="small tiles and batches, few repeats (a check)")
    args = ap.parse_args()
    tile, repeats = (256, 2) if args.quick else (args.tile, 5)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    report(torch=torch.__version__, device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           cuda=torch.version.cuda, numpy=np.__version__)
    mpixel = tile * tile / 1e6
    z = np.random.default_rng(0).normal(0.0, 0.3, (tile, tile)).astype(np.float32)

    # despeckle's own path: ONNX Runtime through the plugin's Despeckler.
    try:
        import onnxruntime as ort

        from despecknet_qgis.core.inference import Despeckler

        report(onnxruntime=ort.__version__, providers=ort.get_available_providers())
        ort_device = "cuda" if args.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        if ort_device == args.device or not args.quick:
            net = Despeckler(device=ort_device, with_noise=False, precision="fp32")
            seconds = timed(lambda: net.predict(z), 1 if ort_device == "cpu" else repeats, lambda: None)
            report(figure="despeckle network, ONNX Runtime", provider=net.provider, tile=tile,
                   s_per_mpixel=round(seconds / mpixel, 4),
                   grd_band_network_s=round(seconds / mpixel * GRD_BAND_MPIXEL, 1))
    except Exception as exc:  # noqa: BLE001 - a figure missing is reported, the others still measured
        report(figure="despeckle network, ONNX Runtime", error=f"{type(exc).__name__}: {exc}"[:300])

    # The same network in PyTorch (what finetune's despeckled output and a torch path would cost).
    model, _ = load_checkpoint(os.path.join(ROOT, "models", "despecknet.pt"))
    model = model.to(device, memory_format=torch.channels_last).eval()
    x = torch.from_numpy(z)[None, None].to(device).contiguous(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for name, bf16 in (("fp32 (TF32)", False), ("bf16 autocast", True)):
        def run():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model.clean(x)
        try:
            seconds = timed(run, repeats, sync)
            report(figure=f"network, PyTorch {name}", tile=tile, s_per_mpixel=round(seconds / mpixel, 4),
                   grd_band_network_s=round(seconds / mpixel * GRD_BAND_MPIXEL, 1))
        except Exception as exc:  # noqa: BLE001
            report(figure=f"network, PyTorch {name}", error=f"{type(exc).__name__}: {exc}"[:300])

    # Training steps: make_model's stage and phase 2's default epoch.
    for name, batch, patch in (("make_model step", 50, 64), ("phase 2 step", PHASE2_TRAINING.batch_size,
                                                             PHASE2_TRAINING.patch)):
        if args.quick:
            batch = 4
        trainer = Trainer(load_checkpoint(os.path.join(ROOT, "models", "despecknet.pt"))[0], PHASE1_BUNDLED,
                          lr=1e-5, device=args.device)
        g = torch.Generator().manual_seed(1)
        data = [torch.randn(batch, 1, patch, patch, generator=g) * 0.3 for _ in range(2)]
        mask = torch.ones(batch, 1, patch, patch)
        seconds = timed(lambda: trainer.step(data[0], data[1], mask), repeats, sync)
        figure = {"figure": name, "batch": batch, "patch": patch, "bf16": trainer.use_bf16,
                  "s_per_step": round(seconds, 4), "steps_per_minute": round(60 / seconds)}
        if name.startswith("phase 2"):
            patches_per_mpixel = 1e6 / PHASE2_TRAINING.stride ** 2
            figure["epoch_s_per_mpixel"] = round(seconds * patches_per_mpixel / batch, 2)
        report(**figure)


if __name__ == "__main__":
    main()
