"""Evidence that phase 2 adapts: a model trained on one speckle regime, tuned on another.

1. Trains a phase 1 model on simulated 5-look uncorrelated speckle only (or loads it).
2. Simulates a target scene with 1-look, spatially correlated speckle (truth known).
3. Despeckles it with the untuned model and with the model tuned for one epoch by
   `fine_tune` (single-look preset), and prints PSNR on dB values against the truth,
   ENL on the homogeneous parts, and the mean of the ratio Y / X_hat (MoR).

Usage: adaptation_check.py [--steps N] [--source model.pt] [--seed S]
tests/data/source_5looks_uncorrelated.pt came from `adaptation_check.py --steps 400 --seed 5`
(`--save-source` keeps the trained checkpoint).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from despecknet_qgis.core.export import export_onnx  # noqa: E402
from despecknet_qgis.core.inference import Despeckler  # noqa: E402
from despecknet_qgis.core.raster import read_band, write_raster  # noqa: E402
from despecknet_qgis.core.losses import PHASE1, PHASE2_SINGLELOOK, LossWeights  # noqa: E402
from despecknet_qgis.core.metrics import enl, psnr_db  # noqa: E402
from despecknet_qgis.core.model import DeSpeckNet  # noqa: E402
from despecknet_qgis.core.phases import fine_tune  # noqa: E402
from despecknet_qgis.core.simulate import SimulatedPatches, simulate_reflectivity, simulate_speckle  # noqa: E402
from despecknet_qgis.core.tiled_predict import despeckle_raster  # noqa: E402
from despecknet_qgis.core.training import Trainer, TrainingRecord, save_checkpoint, seed_everything  # noqa: E402


def train_source(path, steps, seed, batch=64):
    seed_everything(seed)
    model = DeSpeckNet()
    trainer = Trainer(model, PHASE1, lr=1e-3)
    data = SimulatedPatches(n_scenes=32, patch=40, seed=seed, regimes=[(5.0, 0.0)])
    for step in range(steps):
        if step == int(0.7 * steps):
            trainer.set_lr(1e-4)
        trainer.step(*(torch.from_numpy(a) for a in data.batch(batch)))
    record = TrainingRecord()
    record.add(phase=1, data="simulated, 5 looks, uncorrelated", steps=steps, batch=batch, seed=seed)
    save_checkpoint(path, model, record)
    export_onnx(model, path.replace(".pt", ".onnx"), record, "source-5looks")


def scores(xhat, y, scene):
    h = scene.homogeneous
    return {"psnr_db": psnr_db(xhat, scene.reflectivity), "mor": float(np.mean(y / xhat)),
            "enl_homog": float(np.median([enl(xhat[scene.parcels == p]) for p in np.unique(scene.parcels[h])
                                          if (h & (scene.parcels == p)).sum() > 200]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--source", default=None)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--stride", type=int, default=20)
    ap.add_argument("--patience", type=int, default=0, help="early stopping patience (0: off)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lambda-tv", type=float, default=PHASE2_SINGLELOOK.lambda_tv)
    ap.add_argument("--mu", type=float, default=PHASE2_SINGLELOOK.mu)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--save-source", default=None, help="copy the trained source checkpoint here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    source = args.source or os.path.join(tmp, "source.pt")
    if args.source and not os.path.exists(args.source.replace(".pt", ".onnx")):
        from despecknet_qgis.core.training import load_checkpoint

        model, record = load_checkpoint(args.source)
        source = os.path.join(tmp, "source.pt")
        save_checkpoint(source, model, record)
        export_onnx(model, source.replace(".pt", ".onnx"), record, "source")
    if not args.source:
        t = time.time()
        train_source(source, args.steps, args.seed)
        print(f"source model: {args.steps} steps on 5-look uncorrelated speckle in {time.time() - t:.0f} s ({source})")
        if args.save_source:
            import shutil

            shutil.copy(source, args.save_source)
    rng = np.random.default_rng(args.seed + 100)
    scene = simulate_reflectivity((args.size, args.size), rng, parcel_size=48.0)
    y = scene.reflectivity * simulate_speckle(scene.reflectivity.shape, 1.0, 0.8, rng)
    target = os.path.join(tmp, "target.tif")
    write_raster(target, y)
    print(f"target: {args.size}x{args.size}, 1 look, correlated speckle; noisy PSNR(dB) {psnr_db(y, scene.reflectivity):.2f}")
    despeckle_raster(target, os.path.join(tmp, "untuned.tif"), Despeckler(source.replace(".pt", ".onnx"), "cpu", with_noise=False))
    print("untuned:", {k: round(v, 3) for k, v in scores(read_band(os.path.join(tmp, "untuned.tif")), y, scene).items()})
    for looks in (1.0,):
        t = time.time()
        weights = LossWeights(args.mu, PHASE2_SINGLELOOK.xi, args.lambda_tv)
        rep = fine_tune(target, os.path.join(tmp, "tuned.onnx"), base_model=source, weights=weights, looks=looks,
                        lr=args.lr, stride=args.stride, seed=0, calibrate=not args.no_calibrate, patience=args.patience or None, epochs=args.epochs)
        seconds = time.time() - t
        despeckle_raster(target, os.path.join(tmp, "tuned.tif"), Despeckler(rep.onnx_path, "cpu", with_noise=False))
        s = scores(read_band(os.path.join(tmp, "tuned.tif")), y, scene)
        print(f"tuned (looks={looks}, {rep.steps} steps, {seconds:.1f} s, early stop {rep.stopped_early}):",
              {k: round(v, 3) for k, v in s.items()})


if __name__ == "__main__":
    main()
