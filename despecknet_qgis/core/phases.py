"""The two training phases of deSpeckNet as whole jobs: data in, ONNX model and checkpoint out.

phase 1, `train`: supervised, on image/label pairs (labels from temporal_label).
phase 2, `fine_tune`: unsupervised, on the image to despeckle itself, usually one epoch.
Both write `<model>.onnx` (for despeckle) and `<model>.pt` (to continue training or tune).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .domain import LOG_SCALE, log_speckle_mean
from .errors import Cancelled, DespeckNetError
from .losses import PHASE1, PHASE2_MULTILOOK, PHASE2_SINGLELOOK, LossWeights
from .patches import ImagePair, RasterPatches
from .progress import SILENT, Progress

PRESETS = {"multilook": PHASE2_MULTILOOK, "singlelook": PHASE2_SINGLELOOK}


def bundled_checkpoint_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "despecknet.pt")


def checkpoint_path_for(onnx_path: str) -> str:
    return os.path.splitext(onnx_path)[0] + ".pt"


@dataclass
class TrainingReport:
    onnx_path: str
    checkpoint_path: str
    history: list
    best_validation: float | None
    stopped_early: bool
    steps: int
    seconds: float
    patches_seen: int
    pixels: int


def _check_output(onnx_path: str, inputs: list[str]) -> None:
    if not onnx_path.lower().endswith(".onnx"):
        raise DespeckNetError(f"OUTPUT_MODEL {onnx_path} must end with .onnx.")
    folder = os.path.dirname(os.path.abspath(onnx_path))
    if not os.path.isdir(folder):
        raise DespeckNetError(f"Output folder {folder} does not exist.")
    from .raster import same_file

    for p in inputs:
        if p and (same_file(onnx_path, p) or same_file(checkpoint_path_for(onnx_path), p)):
            raise DespeckNetError(f"OUTPUT_MODEL would overwrite the input {p}: choose another file name.")


def _run(model, record, source, weights, onnx_path, version, description, progress, phase_info, before_export=None,
         **fit_args):
    from .export import export_onnx
    from .training import fit, save_checkpoint

    ckpt = checkpoint_path_for(onnx_path)
    tmp_ckpt = ckpt + ".partial"
    saved = []

    def checkpoint(m, epoch):
        save_checkpoint(tmp_ckpt, m, record)
        os.replace(tmp_ckpt, ckpt)
        saved.append(epoch)

    try:
        result = fit(model, source, weights, progress=progress, checkpoint=checkpoint, **fit_args)
    except Cancelled:
        if saved:
            raise Cancelled(f"Cancelled by the user; the checkpoint of epoch {saved[-1]} is kept in {ckpt} (no ONNX model was written).")
        raise
    finally:
        if os.path.exists(tmp_ckpt):
            os.remove(tmp_ckpt)
    if before_export is not None:
        phase_info = {**phase_info, **before_export(model)}
    record.add(**phase_info, weights=asdict(weights), steps=result.steps, patches=result.patches_seen,
               seconds=round(result.seconds, 1), best_validation=result.best_validation, stopped_early=result.stopped_early,
               seed=fit_args.get("seed"), bf16=result.bf16)
    save_checkpoint(tmp_ckpt, model, record)
    os.replace(tmp_ckpt, ckpt)
    export_onnx(model, onnx_path, record, version, description)
    return result, ckpt


def radiometric_gain(model, source, margin: int = 12) -> float:
    """mean(Y / X_hat) over the valid centres of blocks of the image (MoR; 1 = unbiased)."""
    import numpy as np
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for z, valid in source.block_images():
            clean = model.clean(torch.from_numpy(z)[None, None]).numpy()[0, 0]
            inner = (slice(margin, -margin), slice(margin, -margin)) if min(z.shape) > 4 * margin else (slice(None), slice(None))
            keep = valid[inner]
            ratio = np.exp(LOG_SCALE * (z[inner][keep].astype(np.float64) - clean[inner][keep]))
            total += float(ratio.sum())
            count += int(keep.sum())
    return total / count if count else 1.0


def calibrate_radiometry(model, source) -> float:
    """Scale X_hat so that mean(Y / X_hat) = 1 on the image: E[Y | X] = X for unit-mean speckle.

    The gain is folded into the bias of the clean branch's last convolution (a constant
    in the log domain), so the exported model carries it. Returns the gain applied.
    """
    import math

    import torch

    gain = radiometric_gain(model, source)
    with torch.no_grad():
        model.clean[-1].bias += math.log(gain) / LOG_SCALE
    return gain


def _base_model(initial: str | None, seed: int):
    from .model import DeSpeckNet
    from .training import TrainingRecord, load_checkpoint, seed_everything

    seed_everything(seed)  # the initial weights too come from the seed

    if initial:
        if not os.path.isfile(initial):
            raise DespeckNetError(f"Checkpoint {initial} does not exist.")
        return load_checkpoint(initial)
    return DeSpeckNet(), TrainingRecord()


def train(
    pairs: list[ImagePair],
    onnx_path: str,
    epochs: int = 30,
    patch: int = 40,
    stride: int = 9,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_end: float = 1e-4,
    lr_steps: int = 3,
    weights: LossWeights = PHASE1,
    seed: int = 0,
    validation_fraction: float = 0.1,
    initial_model: str | None = None,
    progress: Progress = SILENT,
    use_bf16: bool | None = None,
) -> TrainingReport:
    """Phase 1: supervised training on (noisy, label[, mask]) pairs."""
    if not pairs:
        raise DespeckNetError("Give at least one noisy image with its reference label.")
    if any(not p.label for p in pairs):
        raise DespeckNetError("Every INPUT image needs a REFERENCE label (same number of each, in the same order).")
    _check_output(onnx_path, [p.noisy for p in pairs] + [p.label for p in pairs] + [initial_model])
    if epochs < 1:
        raise DespeckNetError("EPOCHS must be at least 1.")
    model, record = _base_model(initial_model, seed)
    source = RasterPatches(pairs, patch, stride, validation_fraction, seed, progress)
    progress.info(f"{source.training_patches} training patches, {len(source.validation_blocks)} validation blocks")
    result, ckpt = _run(
        model, record, source, weights, onnx_path, version="phase1",
        description=f"deSpeckNet phase 1 on {len(pairs)} image(s)", progress=progress,
        phase_info={"phase": 1, "data": [os.path.basename(p.noisy) for p in pairs], "epochs": epochs, "patch": patch,
                    "stride": stride, "batch": batch_size, "lr": [lr, lr_end, lr_steps]},
        epochs=epochs, batch_size=batch_size, lr=lr, lr_end=lr_end, lr_steps=lr_steps, seed=seed, use_bf16=use_bf16,
    )
    return TrainingReport(onnx_path, ckpt, result.history, result.best_validation, result.stopped_early, result.steps,
                          result.seconds, result.patches_seen, source.training_patches * patch * patch)


def fine_tune(
    image: str,
    onnx_path: str,
    band: int = 1,
    domain: str = "intensity",
    base_model: str | None = None,
    weights: LossWeights = PHASE2_MULTILOOK,
    epochs: int = 1,
    patch: int = 40,
    stride: int = 20,
    batch_size: int = 128,
    lr: float = 1e-4,
    validation_fraction: float = 0.1,
    looks: float | None = None,
    calibrate: bool = True,
    freeze_batchnorm: bool = True,
    evaluations_per_epoch: int = 8,
    patience: int | None = None,
    seed: int = 0,
    progress: Progress = SILENT,
    use_bf16: bool | None = None,
) -> TrainingReport:
    """Phase 2: adapt a trained model to `image` without any label (target = the image itself).

    In the log domain the image is biased low by E[ln N] = digamma(L) - ln(L) (-2.5 dB for
    one look); with `looks` given, the mu term's target is corrected by that much (the
    paper's linear MSE has no such bias). With `calibrate`, the tuned model is finally
    scaled so that the mean of Y / X_hat on the image is 1 (see calibrate_radiometry).
    """
    base = base_model or bundled_checkpoint_path()
    _check_output(onnx_path, [image, base])
    if epochs < 1:
        raise DespeckNetError("EPOCHS must be at least 1.")
    model, record = _base_model(base, seed)
    if looks is not None and looks <= 0:
        raise DespeckNetError("LOOKS must be positive.")
    shift = log_speckle_mean(looks) / LOG_SCALE if looks else 0.0
    source = RasterPatches([ImagePair(image, band, domain=domain, target_shift=shift)], patch, stride,
                           validation_fraction, seed, progress)
    progress.info(f"{source.training_patches} training patches, {len(source.validation_blocks)} validation blocks")
    result, ckpt = _run(
        model, record, source, weights, onnx_path, version="phase2",
        description=f"deSpeckNet tuned (phase 2) on {os.path.basename(image)}", progress=progress,
        phase_info={"phase": 2, "data": os.path.basename(image), "base": os.path.basename(base), "epochs": epochs,
                    "patch": patch, "stride": stride, "batch": batch_size, "lr": lr, "looks": looks},
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, evaluations_per_epoch=evaluations_per_epoch,
        patience=patience if source.validation_blocks else None, use_bf16=use_bf16, freeze_batchnorm=freeze_batchnorm,
        before_export=(lambda m: {"radiometric_gain": calibrate_radiometry(m, source)}) if calibrate else None,
    )
    return TrainingReport(onnx_path, ckpt, result.history, result.best_validation, result.stopped_early, result.steps,
                          result.seconds, result.patches_seen, source.training_patches * patch * patch)
