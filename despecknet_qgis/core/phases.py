"""The two training phases of deSpeckNet as whole jobs: data in, ONNX model and checkpoint out.

phase 1, `train`: supervised, on image/label pairs (labels from temporal_label).
phase 2, `fine_tune`: unsupervised, on the image to despeckle itself, usually one epoch.
Both write `<model>.onnx` (for despeckle) and `<model>.pt` (to continue training or tune).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .defaults import PHASE1_TRAINING as P1
from .defaults import PHASE2_TRAINING as P2
from .defaults import RANGES, ZERO_IS_NODATA
from .domain import LOG_SCALE, log_speckle_mean
from .errors import Cancelled, InputError, OutputError, TrainingError, translate_errors
from .files import check_outputs, commit_files, partial_path, remove_quietly, remove_stale_partials, same_file, writing_lock
from .losses import PHASE1, PHASE2_MULTILOOK, LossWeights
from .raster import gdal_cache_limit
from .model_info import bundled_checkpoint_path, checkpoint_path_for, unfinished_checkpoint_path_for
from .patches import ImagePair, RasterPatches
from .progress import SILENT, Progress


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


def _check_output(onnx_path: str, inputs: dict) -> None:
    """Before any work: the model and its checkpoint can be written and overwrite no input."""
    if not str(onnx_path).lower().endswith(".onnx"):
        raise OutputError(f"`onnx_path` {onnx_path} must end with .onnx.")
    unfinished = unfinished_checkpoint_path_for(onnx_path)
    # Going on from the checkpoint a cancelled run into this very model kept, as its message says to: it is
    # read before the first epoch replaces it (it was refused as "the input").
    inputs = {k: v for k, v in inputs.items() if not (isinstance(v, str) and v and same_file(v, unfinished))}
    check_outputs({"onnx_path": onnx_path, "checkpoint_path": checkpoint_path_for(onnx_path),
                   "unfinished_checkpoint_path": unfinished}, inputs)


def _save_checked(path: str, model, record, optimizer_state=None) -> None:
    """save_checkpoint into a partial file read back whole, then moved onto `path`."""
    tmp = partial_path(path)
    try:
        _write_checkpoint(tmp, path, model, record, optimizer_state)
        commit_files([(tmp, path)])
    finally:
        remove_quietly(tmp)


def _write_checkpoint(tmp: str, path: str, model, record, optimizer_state=None) -> None:
    from .training import load_checkpoint, save_checkpoint

    try:
        save_checkpoint(tmp, model, record, optimizer_state)
        load_checkpoint(tmp)  # read back: a full disk can leave a truncated file behind
    except Exception as exc:  # noqa: BLE001 - OSError, torch's RuntimeError, or ModelError from the read-back
        raise _write_failed(path, exc) from exc


def _write_failed(path: str, exc: BaseException) -> OutputError:
    detail = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return OutputError(f"Writing {path} failed ({detail}). Is the disk full or read-only? "
                       "A file that was already there is unchanged.")


def _run(model, record, source, weights, onnx_path, *args, **kwargs):
    """Train and commit under the model's writing lock: two runs into one name shared its unfinished
    checkpoint (the one that finished deleted the other's), and a failed fine-tune put back the pair it had
    found over the other's finished one."""
    with writing_lock(onnx_path, "a training or fine-tune"):
        return _train_and_commit(model, record, source, weights, onnx_path, *args, **kwargs)


def _train_and_commit(model, record, source, weights, onnx_path, version, description, progress, phase_info,
                      before_export=None, earlier: dict | None = None, **fit_args):
    """`earlier`: the steps and patches of the unfinished training this one goes on with (_going_on)."""
    from .export import export_onnx
    from .training import TrainingRecord, fit

    ckpt, unfinished = checkpoint_path_for(onnx_path), unfinished_checkpoint_path_for(onnx_path)
    for p in (ckpt, onnx_path, unfinished):
        remove_stale_partials(p)
    saved = []
    earlier = earlier or {}
    counts = lambda steps, patches: {"steps": earlier.get("steps", 0) + steps,  # noqa: E731
                                     "patches": earlier.get("patches", 0) + patches}

    def checkpoint(m, epoch, optimizer_state, steps, patches):
        # A kept checkpoint says how it was made, this unfinished phase included, and keeps Adam's state.
        so_far = TrainingRecord([*record.phases, {**phase_info, "weights": asdict(weights), "epochs_done": epoch,
                                                  "complete": False, "seed": fit_args.get("seed"),
                                                  **counts(steps, patches)}])
        _save_checked(unfinished, m, so_far, optimizer_state)
        saved.append(epoch)

    def kept() -> str:
        if not saved:
            return ""
        if phase_info.get("phase") == 2:  # phase 2 does not go on: a new fine-tune starts from its base again
            how = ("its weights are partly tuned: give it as `base_model` only to tune them further; a new fine-tune of the "
                   "image starts from the base model again")
        else:
            how = ("give it as the initial model to go on, into this model or another: with the same settings the "
                   "training goes on where it stopped")
        return f" The checkpoint of epoch {saved[-1]} is kept in {unfinished} ({how}); {ckpt} and {onnx_path} are as they were."

    try:
        result = fit(model, source, weights, progress=progress, checkpoint=checkpoint, **fit_args)
    except Cancelled as exc:
        raise Cancelled(f"{exc}{kept()}") from exc
    except TrainingError as exc:
        raise TrainingError(f"{exc}{kept()}") from exc
    if before_export is not None:
        phase_info = {**phase_info, **before_export(model)}
    done = fit_args.get("start_epoch", 0) + len(saved)
    record.add(**phase_info, weights=asdict(weights), **counts(result.steps, result.patches_seen),
               seconds=round(result.seconds, 1), best_validation=result.best_validation, stopped_early=result.stopped_early,
               seed=fit_args.get("seed"), bf16=result.bf16, device=result.device, epochs_done=done or None,
               complete=True)
    tmp_ckpt, tmp_onnx = partial_path(ckpt), partial_path(onnx_path)
    try:
        _write_checkpoint(tmp_ckpt, ckpt, model, record)
        try:
            export_onnx(model, tmp_onnx, record, version, description, atomic=False)
        except Exception as exc:  # noqa: BLE001 - OSError, or onnx/torch errors from a file cut short
            raise _write_failed(onnx_path, exc) from exc
        commit_files([(tmp_ckpt, ckpt), (tmp_onnx, onnx_path)])
    except OutputError as exc:
        raise OutputError(f"{exc}{kept()}") from exc
    finally:
        remove_quietly(tmp_ckpt, tmp_onnx)
    remove_quietly(unfinished)  # the finished pair holds everything it had
    return result, ckpt


def radiometric_gain(model, source, looks: float | None = None) -> float:
    """mean(Y / X_hat) over the valid centres of blocks of the image (MoR; 1 = unbiased); with `looks`, the
    gain that makes it 1 once despeckle has restored point targets (adaptation.output_mean_ratio)."""
    from .adaptation import score_model

    return score_model(model, source.block_images(), looks).gain


def calibrate_radiometry(model, source, gain: float | None = None, looks: float | None = None) -> float:
    """Scale X_hat so that mean(Y / X_hat) = 1 on the image: E[Y | X] = X for unit-mean speckle.

    The gain (measured here unless given) is folded into the bias of the clean branch's
    last convolution (a constant in the log domain), so the exported model carries it.
    Returns the gain applied.
    """
    import math

    import torch

    if gain is None:
        gain = radiometric_gain(model, source, looks)
    with torch.no_grad():
        model.clean[-1].bias += math.log(gain) / LOG_SCALE
    return gain


def _base_model(initial: str | None, seed: int, argument: str):
    from .model import DeSpeckNet
    from .training import TrainingRecord, load_checkpoint, seed_everything

    seed_everything(seed)  # the initial weights too come from the seed

    if initial:
        if os.path.isdir(initial):
            raise InputError(f"`{argument}` {initial} is a folder: choose the .pt checkpoint in it.")
        if not os.path.isfile(initial):
            raise InputError(f"Checkpoint {initial} (`{argument}`) does not exist.")
        if initial.lower().endswith(".onnx"):
            raise InputError(f"`{argument}` {initial} is an ONNX model; training starts from the .pt checkpoint written "
                             f"beside it ({os.path.splitext(initial)[0]}.pt).")
        return load_checkpoint(initial)
    return DeSpeckNet(), TrainingRecord()


GOING_ON_KEYS = ("phase", "data", "epochs", "patch", "stride", "batch", "lr", "weights", "seed")


def _going_on(initial_model: str | None, record, phase_info: dict, weights, seed: int,
              progress: Progress) -> tuple[int, dict | None, dict]:
    """(first epoch to run, Adam's state, the earlier steps and patches) when `initial_model` is the checkpoint
    an unfinished phase 1 kept and this run asks for the same training: it goes on where that one stopped, with
    its learning-rate schedule and optimiser state, and its unfinished phase leaves the record (the finished one
    replaces it). Where every epoch was done (the export had failed), it is exported without more training.
    Otherwise (0, None, {}): a new training from the checkpoint's weights, the schedule from its start."""
    from .training import load_optimizer_state

    last = record.phases[-1] if record.phases else None
    if not initial_model or not last or last.get("complete") is not False:
        return 0, None, {}
    done = int(last.get("epochs_done") or 0)
    asked = {**phase_info, "weights": asdict(weights), "seed": seed}
    differ = [k for k in GOING_ON_KEYS if last.get(k) != asked.get(k)]
    earlier = {k: last[k] for k in ("steps", "patches") if k in last}
    if not differ and done >= phase_info["epochs"] > 0:
        record.phases.pop()
        progress.info(f"{initial_model} holds all {done} epochs of this training (its export had failed): exported "
                      "without more training")
        return done, None, earlier
    part_done = 0 < done < phase_info["epochs"]
    # the file is read again for Adam's state only where the settings allow going on
    optimizer_state = load_optimizer_state(initial_model) if part_done and not differ else None
    if optimizer_state is None:
        why = (f"its {', '.join(differ)} differ from this run's" if differ else
               f"it had done {done} of its epochs" if not part_done else
               "it holds no optimiser state")
        progress.info(f"{initial_model} is an unfinished training, but {why}: a new training starts from its weights, "
                      "the learning rate from the start of its schedule.")
        return 0, None, {}
    record.phases.pop()
    progress.info(f"going on with the unfinished training of {initial_model}: epochs {done + 1} to "
                  f"{phase_info['epochs']}, with its learning-rate schedule and optimiser state")
    return done, optimizer_state, earlier


def _check_training_numbers(**values) -> None:
    for name, value in values.items():
        if value is not None:
            RANGES[name].check(value, name)


@translate_errors
@gdal_cache_limit()
def train(
    pairs: list[ImagePair],
    onnx_path: str,
    epochs: int = P1.epochs,
    patch: int = P1.patch,
    stride: int = P1.stride,
    batch_size: int = P1.batch_size,
    lr: float = P1.lr,
    lr_end: float = P1.lr_end,
    lr_steps: int = P1.lr_steps,
    weights: LossWeights = PHASE1,
    seed: int = P1.seed,
    validation_fraction: float = P1.validation_fraction,
    initial_model: str | None = None,
    progress: Progress = SILENT,
    use_bf16: bool | None = None,
    device: str = "auto",
) -> TrainingReport:
    """Phase 1: supervised training on (noisy, label[, mask]) pairs.

    Writes `onnx_path` and the checkpoint beside it (same name, .pt) together, once both
    are complete and read back; after each epoch the checkpoint alone is updated, so a
    cancel keeps the last finished epoch. Defaults: defaults.PHASE1_TRAINING. `device`: where
    torch trains (training.torch_device: auto, cpu or cuda).

    Raises:
        InputError, OutputError (both checked before any work), ModelError (initial_model),
        TrainingError (diverged), Cancelled.
    """
    from .dependencies import require

    require("train", "Training (phase 1)")  # torch and onnx before any work, not at export
    from .training import torch_device

    torch_device(device)  # "cuda" where torch cannot use it fails before any work
    if not pairs:
        raise InputError("Give at least one noisy image with its reference label.")
    if any(not p.label for p in pairs):
        raise InputError("Every image needs a reference label (the same number of each, in the same order).")
    _check_output(onnx_path, {"images": [p.noisy for p in pairs], "labels": [p.label for p in pairs],
                              "masks": [p.mask for p in pairs], "initial_model": initial_model})
    _check_training_numbers(epochs=epochs, patch=patch, stride=stride, batch_size=batch_size, lr=lr, lr_end=lr_end,
                            validation_fraction=validation_fraction)
    model, record = _base_model(initial_model, seed, "initial_model")
    phase_info = {"phase": 1, "data": [os.path.basename(p.noisy) for p in pairs], "epochs": epochs, "patch": patch,
                  "stride": stride, "batch": batch_size, "lr": [lr, lr_end, lr_steps]}
    start_epoch, optimizer_state, earlier = _going_on(initial_model, record, phase_info, weights, seed, progress)
    source = RasterPatches(pairs, patch, stride, validation_fraction, seed, progress)
    progress.info(f"{source.training_patches} training patches, {len(source.validation_blocks)} validation blocks")
    result, ckpt = _run(
        model, record, source, weights, onnx_path, version="phase1",
        description=f"deSpeckNet phase 1 on {len(pairs)} image(s)", progress=progress,
        phase_info={**phase_info, **({"went_on_from_epoch": start_epoch} if start_epoch else {})},
        epochs=epochs, batch_size=batch_size, lr=lr, lr_end=lr_end, lr_steps=lr_steps, seed=seed, use_bf16=use_bf16,
        device=device, start_epoch=start_epoch, optimizer_state=optimizer_state, earlier=earlier,
    )
    return TrainingReport(onnx_path, ckpt, result.history, result.best_validation, result.stopped_early, result.steps,
                          result.seconds, result.patches_seen, source.training_patches * patch * patch)


def training_device(device: str) -> str:
    """`device` checked for training before any work (torch imported only here: the plugin loads without it)."""
    from .dependencies import require

    require("finetune", "Fine-tuning (phase 2)")
    from .training import torch_device

    return torch_device(device).type


def _estimated_looks(image: str, band: int, domain: str, zero_is_nodata: bool, progress: Progress) -> float | None:
    """The band's looks as despeckle estimates them: which bundled model despeckle would choose, and so
    which bundled checkpoint phase 2 starts from (the presets' nominal looks say nothing of that:
    a 2-look image under the multilook preset would start from the multi-look model)."""
    from .defaults import TILE_SIZE
    from .raster import statistics_of

    return statistics_of(image, band, domain, TILE_SIZE, progress, zero_is_nodata).looks


LOOKS_MISMATCH = 1.5  # given looks this far from the estimate (either way) are warned


def _phase2_looks(looks: float | None, estimated: float | None, estimate: bool, default: float | None,
                  progress: Progress) -> float | None:
    """The looks that set the mu target's bias and judge the ratio image (see fine_tune)."""
    if looks is None and estimate:
        if estimated is not None:
            progress.info(f"looks: {estimated:.2f}, estimated on the band's flattest blocks")
            return estimated
        if default is not None:
            progress.info(f"Warning: the band's looks cannot be estimated (no fully valid 16x16 block): the "
                          f"preset's {default:g} are used; give `looks` if the image has another number.")
        return default
    if looks is not None and estimated is not None and max(looks / estimated, estimated / looks) > LOOKS_MISMATCH:
        progress.info(f"Warning: `looks` {looks:g} is far from the {estimated:.2f} estimated on the band's flattest "
                      "blocks; the speckle's bias and the choice between tuned and base weights use the given "
                      f"{looks:g}. Leave `looks` to be estimated unless the estimate is known to be wrong.")
    return looks


@translate_errors
@gdal_cache_limit()
def fine_tune(
    image: str,
    onnx_path: str,
    band: int = 1,
    domain: str = "intensity",
    base_model: str | None = None,
    weights: LossWeights = PHASE2_MULTILOOK,
    epochs: int = P2.epochs,
    patch: int = P2.patch,
    stride: int = P2.stride,
    batch_size: int = P2.batch_size,
    lr: float = P2.lr,
    validation_fraction: float = P2.validation_fraction,
    looks: float | None = None,
    estimate_looks: bool = False,
    default_looks: float | None = None,
    calibrate: bool = True,
    freeze_batchnorm: bool = True,
    evaluations_per_epoch: int | None = None,
    patience: int | None = None,
    acceptance: bool = True,
    seed: int = P2.seed,
    progress: Progress = SILENT,
    use_bf16: bool | None = None,
    zero_is_nodata: bool = ZERO_IS_NODATA,
    device: str = "auto",
) -> TrainingReport:
    """Phase 2: adapt a trained model to `image` without any label (target = the image itself).

    In the log domain the image is biased low by E[ln N] = digamma(L) - ln(L) (-2.5 dB for
    one look); with `looks` given, the mu term's target is corrected by that much (the
    paper's linear MSE has no such bias). With `calibrate`, the tuned model is finally
    scaled so that the mean of Y / X_hat on the image is 1 (see calibrate_radiometry).
    With `acceptance` and `looks` known, the ratio image decides (core/adaptation.py): a
    base model that already fits the image is not tuned, and tuned weights are kept only
    when they explain the speckle better than the base ones. With `zero_is_nodata`, zeros of
    a band that declares no nodata are nodata (GRD borders; see raster.input_nodata).
    With `estimate_looks` and `looks` None, the looks are the band's own, estimated on its
    flattest blocks as despeckle estimates them (`default_looks` where they cannot be):
    a preset's nominal looks on another kind of image misjudged the ratio image (1 look on
    4.4-look data kept tuned weights 5.4 dB worse than the base).
    `device`: where torch tunes (training.torch_device: auto, cpu or cuda).
    `evaluations_per_epoch`: validation passes an epoch; None: 8 with `patience` (early
    stopping needs them), else 1 (the history only; each pass costs about a second per Mpixel).
    """
    from .dependencies import require

    require("finetune", "Fine-tuning (phase 2)")  # torch and onnx before any work, not at export
    from .training import torch_device

    torch_device(device)  # "cuda" where torch cannot use it fails before any work
    # Outputs and numbers are checked before the pass over the image that chooses the bundled base
    # (every bundled checkpoint is a protected file, so the general one stands for it here).
    _check_output(onnx_path, {"image": image, "base_model": base_model or bundled_checkpoint_path()})
    _check_training_numbers(epochs=epochs, patch=patch, stride=stride, batch_size=batch_size, lr=lr,
                            validation_fraction=validation_fraction)
    if looks is not None and looks <= 0:
        raise InputError(f"`looks` must be positive (got {looks:g}).")
    estimated = _estimated_looks(image, band, domain, zero_is_nodata, progress)
    base = base_model or bundled_checkpoint_path(estimated)
    looks = _phase2_looks(looks, estimated, estimate_looks, default_looks, progress)
    model, record = _base_model(base, seed, "base_model")
    shift = log_speckle_mean(looks) / LOG_SCALE if looks else 0.0
    source = RasterPatches([ImagePair(image, band, domain=domain, target_shift=shift, zero_is_nodata=zero_is_nodata)], patch, stride,
                           validation_fraction, seed, progress)
    progress.info(f"{source.training_patches} training patches, {len(source.validation_blocks)} validation blocks")
    calibrate_fn = calibrate_radiometry if calibrate else None
    base_candidate = None
    if acceptance:
        # The base model with its gain, scored before tuning: where it already fits, tuning only costs quality.
        import copy

        from .adaptation import calibrated_candidate, choose_weights, keep_base

        uncalibrated = copy.deepcopy(model.state_dict())
        base_candidate = calibrated_candidate(model, uncalibrated, source, looks, calibrate_fn)
        progress.info(f"ratio image with the base weights: {base_candidate.score.describe()}")
        model.load_state_dict(uncalibrated)  # tuning starts from the base weights as they were
    skip = base_candidate is not None and base_candidate.fits

    def finish(m, source):
        if skip:
            return keep_base(m, base_candidate, progress)
        if base_candidate is not None:
            return choose_weights(m, base_candidate, source, looks, calibrate_fn, progress)
        return {"radiometric_gain": calibrate_radiometry(m, source, looks=looks)} if calibrate else {}

    result, ckpt = _run(
        model, record, source, weights, onnx_path, version="phase2",
        description=f"deSpeckNet tuned (phase 2) on {os.path.basename(image)}", progress=progress,
        phase_info={"phase": 2, "data": os.path.basename(image), "base": os.path.basename(base), "epochs": epochs,
                    "patch": patch, "stride": stride, "batch": batch_size, "lr": lr, "looks": looks},
        epochs=0 if skip else epochs, batch_size=batch_size, lr=lr, seed=seed,
        evaluations_per_epoch=evaluations_per_epoch or (8 if patience else 1), patience=patience if source.validation_blocks else None,
        use_bf16=use_bf16, freeze_batchnorm=freeze_batchnorm, before_export=lambda m: finish(m, source), device=device,
    )
    return TrainingReport(onnx_path, ckpt, result.history, result.best_validation, result.stopped_early, result.steps,
                          result.seconds, result.patches_seen, source.training_patches * patch * patch)
