"""Train the bundled deSpeckNet on simulated SAR scenes (phase 1) and export it.

Reproducible on a CPU: `make model` (fixed seed). Writes models/despecknet.onnx, the
PyTorch checkpoint models/despecknet.pt and models/training_log.json (losses,
validation quality, time). See models/MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from despecknet_qgis.core.export import export_onnx  # noqa: E402
from despecknet_qgis.core.losses import PHASE1  # noqa: E402
from despecknet_qgis.core.model import DeSpeckNet  # noqa: E402
from despecknet_qgis.core.simulate import SimulatedPatches  # noqa: E402
from despecknet_qgis.core.training import Trainer, TrainingRecord, save_checkpoint, seed_everything, step_learning_rate  # noqa: E402

VERSION = "0.1.0-sim"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--patch", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-end", type=float, default=1e-4)
    ap.add_argument("--lr-steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "models"))
    ap.add_argument("--fp32", action="store_true", help="disable bf16 autocast")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    train = SimulatedPatches(n_scenes=64, patch=args.patch, seed=args.seed)
    val_source = SimulatedPatches(n_scenes=16, patch=64, seed=args.seed + 1000)
    val = [tuple(torch.from_numpy(a) for a in val_source.batch(64)) for _ in range(4)]

    model = DeSpeckNet()
    trainer = Trainer(model, PHASE1, lr=args.lr, use_bf16=False if args.fp32 else None)
    log = {"args": vars(args), "bf16": trainer.use_bf16, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "history": []}
    started = time.time()
    baseline = trainer.evaluate(val)
    print(f"validation before training: {baseline}", flush=True)
    log["validation_start"] = baseline
    running = []
    for step in range(1, args.steps + 1):
        trainer.set_lr(step_learning_rate((step - 1) / args.steps, args.lr, args.lr_end, args.lr_steps))
        parts = trainer.step(*(torch.from_numpy(a) for a in train.batch(args.batch)))
        running.append(parts["fidelity"])
        if step % 50 == 0 or step == args.steps:
            v = trainer.evaluate(val)
            entry = {"step": step, "seconds": round(time.time() - started, 1), "train_fidelity": float(np.mean(running)), **{f"val_{k}": x for k, x in v.items()}}
            log["history"].append(entry)
            running = []
            print(json.dumps(entry), flush=True)
    seconds = time.time() - started
    record = TrainingRecord()
    record.add(phase=1, data="simulated SAR scenes (tools/make_model.py)", steps=args.steps, batch=args.batch,
               patch=args.patch, lr=[args.lr, args.lr_end], seed=args.seed, weights=asdict(PHASE1),
               bf16=trainer.use_bf16, seconds=round(seconds))
    os.makedirs(args.out, exist_ok=True)
    save_checkpoint(os.path.join(args.out, "despecknet.pt"), model, record)
    export_onnx(model, os.path.join(args.out, "despecknet.onnx"), record, VERSION,
                "deSpeckNet phase 1 on simulated SAR scenes (1 to 10 looks, with and without spatial correlation)")
    log["seconds"] = seconds
    with open(os.path.join(args.out, "training_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"done in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
