"""Training engine shared by phase 1 (supervised) and phase 2 (one-epoch tuning).

Batches are (noisy, target, mask) tensors of shape (B, 1, P, P) in the normalised log
domain. On CPUs with bf16 units (AVX-512 BF16 / AMX) the forward and backward passes
run under bf16 autocast with fp32 weights and fp32 losses: about 4x faster per step
here than fp32, see models/MODEL_CARD.md for the accuracy check.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .errors import InputError, ModelError, ResourceError, TrainingError
from .inference import DEVICES
from .losses import LossWeights, despecknet_loss
from .model import DeSpeckNet

CHECKPOINT_FORMAT = "despecknet-checkpoint/1"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def bf16_supported(device: torch.device | None = None) -> bool:
    if device is not None and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


TORCH_DEVICES = DEVICES  # the same names as despeckling's ONNX Runtime devices


def torch_device(device: str = "auto") -> torch.device:
    """Where training runs: "auto" takes an NVIDIA GPU when this torch can use one, else the CPU.

    Raises:
        InputError: an unknown name; ResourceError: "cuda" asked for where torch cannot use
        it (it fails rather than silently training on the CPU, as despeckling does).
    """
    if isinstance(device, torch.device):
        return device
    if device not in TORCH_DEVICES:
        raise InputError(f"Unknown `device` {device!r}: use one of {', '.join(TORCH_DEVICES)}.")
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if device == "cuda":
        why = ("was built without CUDA" if torch.version.cuda is None
               else f"was built for CUDA {torch.version.cuda} but finds no usable NVIDIA GPU or driver")
        raise ResourceError(
            f"`device` cuda: this PyTorch ({torch.__version__}) {why}. Use `device` auto or cpu, or install a CUDA "
            "build of PyTorch (https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU.")
    return torch.device("cpu")


def step_learning_rate(progress: float, lr_start: float, lr_end: float, steps: int) -> float:
    """Piecewise-constant decay from lr_start to lr_end in `steps` equal stages.

    progress is the fraction of training done (0..1). With steps=3 over 30 epochs this
    is the paper's schedule: a step every 10 epochs, 1e-3 down to 1e-4.
    """
    if steps <= 1 or lr_end == lr_start:
        return lr_start
    stage = min(int(progress * steps), steps - 1)
    return lr_start * (lr_end / lr_start) ** (stage / (steps - 1))


@dataclass
class TrainingRecord:
    """What a checkpoint and the ONNX metadata say about how a model was trained."""

    phases: list = field(default_factory=list)

    def add(self, **phase) -> None:
        self.phases.append(phase)


class Trainer:
    def __init__(self, model: DeSpeckNet, weights: LossWeights, lr: float = 1e-3, use_bf16: bool | None = None,
                 freeze_batchnorm: bool = False, device: str | torch.device = "cpu"):
        """`device`: see torch_device; the model moves there (nn.Module.to moves it in place)."""
        self.device = torch_device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        # Fine-tuning on one image: its few batches would otherwise rewrite the running statistics.
        self.freeze_batchnorm = freeze_batchnorm
        self.weights = weights
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.999))
        self.use_bf16 = bf16_supported(self.device) if use_bf16 is None else use_bf16

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _to_device(self, *tensors: torch.Tensor):
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def _forward(self, noisy: torch.Tensor):
        noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            return self.model(noisy)

    def step(self, noisy, target, mask, energy_weight=None, structure_weight=None, energy_shift=None) -> dict[str, float]:
        """One optimiser step; energy_weight, structure_weight: per-patch weights of the local energy
        and structure terms; energy_shift: per-patch shift of the energy term's target
        (losses.local_energy_error, losses.local_structure_error)."""
        self.model.train()
        if self.freeze_batchnorm:
            for m in self.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        noisy, target, mask = self._to_device(noisy, target, mask)
        energy_weight, structure_weight, energy_shift = (None if w is None else w.to(self.device)
                                                         for w in (energy_weight, structure_weight, energy_shift))
        clean, noise = self._forward(noisy)
        loss, parts = despecknet_loss(clean, noise, noisy, target, mask, self.weights, energy_weight,
                                      structure_weight, energy_shift)
        if not math.isfinite(parts["total"]):
            raise TrainingError("Training diverged: the loss is not finite. Lower `lr` (the learning rate), or check "
                                "the images and labels for extreme values.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return parts

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        """Pixel-weighted mean of each loss term over (noisy, target, mask) batches."""
        self.model.eval()
        sums: dict[str, float] = {}
        total_weight = 0.0
        for batch in batches:
            noisy, target, mask = self._to_device(*batch)
            clean, noise = self._forward(noisy)
            _, parts = despecknet_loss(clean, noise, noisy, target, mask, self.weights)
            w = float(mask.sum())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * w
            total_weight += w
        return {k: v / max(total_weight, 1.0) for k, v in sums.items()}


def save_checkpoint(path: str, model: DeSpeckNet, record: TrainingRecord, optimizer_state: dict | None = None) -> None:
    """`optimizer_state`: Adam's, kept in the checkpoints of unfinished trainings so that they can go on."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = {"format": CHECKPOINT_FORMAT, "state_dict": state, "training": asdict(record)}
    if optimizer_state is not None:
        data["optimizer"] = optimizer_state
    torch.save(data, path)


def load_optimizer_state(path: str) -> dict | None:
    """Adam's state kept in a checkpoint (load_checkpoint has checked the file), or None."""
    state = torch.load(path, map_location="cpu", weights_only=True).get("optimizer")
    return state if isinstance(state, dict) and {"state", "param_groups"} <= set(state) else None


def load_checkpoint(path: str) -> tuple[DeSpeckNet, TrainingRecord]:
    """A model and its training record from a checkpoint written by save_checkpoint.

    Raises:
        ModelError: not a readable PyTorch file, a PyTorch file that is not a deSpeckNet
        checkpoint (including pickles of other Python objects, which are never executed),
        or weights of another architecture.
    """
    import pickle
    import zipfile

    hint = "use a .pt file written by despecknet:train or despecknet:finetune."
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a pickle of Python objects: bytes torch cannot read at all
            raise ModelError(f"{path} is not a readable PyTorch checkpoint (not a PyTorch file); {hint}") from exc
        # torch's own text here explains its weights_only mode at length; what matters to the user:
        raise ModelError(
            f"{path} is a PyTorch file but not a deSpeckNet checkpoint: it stores Python objects other than "
            f"weights, which are not loaded because loading them could run code; {hint}"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{path} is not a readable PyTorch checkpoint ({first}); {hint}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a deSpeckNet checkpoint (expected format {CHECKPOINT_FORMAT}); {hint}")
    state, training = data.get("state_dict"), data.get("training", {})
    # Malformed parts ended in a TypeError, or (a "phases" that is no list) in an AttributeError after a
    # whole training, when the record was extended.
    phases = training.get("phases", []) if isinstance(training, dict) else None
    if not isinstance(state, dict) or not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        raise ModelError(f"{path} is a deSpeckNet checkpoint with a malformed "
                         f"{'state_dict' if not isinstance(state, dict) else 'training record'}; {hint}")
    model = DeSpeckNet()
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        # torch lists each mismatch on its own line after a heading: keep the first few
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = "; ".join(lines[1:4] or lines[:1])[:400]
        raise ModelError(f"{path} does not fit the deSpeckNet architecture (two branches of 17 convolutions, 64 "
                         f"channels): {detail}; {hint}") from exc
    bad = [name for name, value in model.state_dict().items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:  # training from them "diverged" and blamed the learning rate
        raise ModelError(f"{path} holds NaN or infinite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}): "
                         f"the checkpoint is corrupt; {hint}")
    return model, TrainingRecord(phases=list(phases))


class BestWeights:
    """The model weights and optimiser state at the best validation loss so far (early stopping).

    `restore` puts both back, so training could go on from there as if the later steps
    had not happened (Adam's moments belong to the weights they were computed for).
    """

    def __init__(self):
        self.loss: float | None = None
        self.model_state = None
        self.optimizer_state = None

    def offer(self, loss: float, trainer: "Trainer") -> bool:
        """Keep a copy of the current state when `loss` is the best so far; True if it was."""
        import copy

        if self.loss is not None and not loss < self.loss:
            return False
        self.loss = loss
        self.model_state = copy.deepcopy(trainer.model.state_dict())
        self.optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
        return True

    def restore(self, trainer: "Trainer") -> None:
        if self.model_state is not None:
            trainer.model.load_state_dict(self.model_state)
            trainer.optimizer.load_state_dict(self.optimizer_state)


@dataclass
class FitResult:
    history: list = field(default_factory=list)  # one dict per evaluation
    best_validation: float | None = None
    stopped_early: bool = False
    steps: int = 0
    seconds: float = 0.0
    patches_seen: int = 0
    bf16: bool = False
    device: str = "cpu"


def fit(
    model: DeSpeckNet,
    source,
    weights: LossWeights,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_end: float | None = None,
    lr_steps: int = 1,
    seed: int = 0,
    progress=None,
    evaluations_per_epoch: int = 1,
    patience: int | None = None,
    checkpoint=None,
    use_bf16: bool | None = None,
    freeze_batchnorm: bool = False,
    device: str = "cpu",
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
) -> FitResult:
    """Train `model` on a RasterPatches source; returns the loss history.

    Validation (when the source holds validation blocks) runs `evaluations_per_epoch`
    times an epoch; with `patience`, training stops after that many evaluations without
    improvement, and when it stops (early or after the last epoch) the weights and the
    optimiser state of the best evaluation are restored (the early stopping of phase 2).
    Between epochs training goes on from the current weights. `checkpoint(model, epoch, optimizer_state,
    steps, patches)` (this run's steps and patches so far) is called after each completed epoch, so cancelling keeps the last good one. `start_epoch` and
    `optimizer_state` go on with an unfinished training: epochs start_epoch + 1 to `epochs` of the
    same learning-rate schedule, with Adam's moments as they were (the patches come in another order).
    Cancellation is checked before every step. Training runs on `device` (torch_device); the
    model is back on the CPU when fit returns, for the ratio-image scoring and the export.

    Raises:
        TrainingError: the loss stopped being finite; Cancelled.
    """
    import time

    from .progress import SILENT

    progress = progress or SILENT
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    trainer = Trainer(model, weights, lr=lr, use_bf16=use_bf16, freeze_batchnorm=freeze_batchnorm, device=device)
    if optimizer_state is not None:
        trainer.optimizer.load_state_dict(optimizer_state)  # moved to the parameters' device by torch
    result = FitResult(bf16=trainer.use_bf16, device=trainer.device.type)
    started = time.perf_counter()
    per_epoch = max(1, math.ceil(source.training_patches / batch_size))
    total = (epochs - start_epoch) * per_epoch
    eval_every = max(1, per_epoch // max(1, evaluations_per_epoch))
    has_validation = bool(source.validation_blocks)
    best, bad_evals = BestWeights(), 0

    def validate():
        def batches():  # a validation pass can take minutes on a large image: cancellable between batches
            for a, b, c in source.batches(batch_size, rng, validation=True):
                progress.check()
                yield torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)

        batches = batches()
        return trainer.evaluate(batches)["total"]

    if has_validation:
        result.best_validation = validate()
        result.history.append({"step": 0, "epoch": 0, "validation": result.best_validation})
        if patience is not None:
            best.offer(result.best_validation, trainer)
    step = 0
    for epoch in range(start_epoch + 1, epochs + 1):
        trainer.set_lr(step_learning_rate((epoch - 1) / epochs, lr, lr_end or lr, lr_steps))
        losses = []
        for noisy, target, mask in source.batches(batch_size, rng):
            progress.check()
            parts = trainer.step(torch.from_numpy(noisy), torch.from_numpy(target), torch.from_numpy(mask))
            losses.append(parts["total"])
            step += 1
            result.patches_seen += len(noisy)
            progress.set(100.0 * min(step, total) / total)
            if has_validation and (step % eval_every == 0):
                v = validate()
                result.history.append({"step": step, "epoch": epoch, "train": float(np.mean(losses[-eval_every:])), "validation": v})
                progress.info(f"epoch {epoch} step {step}: training loss {np.mean(losses[-eval_every:]):.5f}, validation {v:.5f}")
                if v < result.best_validation:
                    result.best_validation, bad_evals = v, 0
                    if patience is not None:
                        best.offer(v, trainer)
                else:
                    bad_evals += 1
                    if patience is not None and bad_evals >= patience:
                        result.stopped_early = True
                        break
        if not has_validation:
            result.history.append({"step": step, "epoch": epoch, "train": float(np.mean(losses)) if losses else None})
            progress.info(f"epoch {epoch}: training loss {np.mean(losses):.5f}")
        if patience is not None and (result.stopped_early or epoch == epochs):
            best.restore(trainer)
        if checkpoint is not None:
            checkpoint(model, epoch, trainer.optimizer.state_dict(), step, result.patches_seen)
        if result.stopped_early:
            progress.info(f"early stop at step {step}: validation did not improve for {patience} evaluations")
            break
    model.to("cpu")
    model.eval()
    result.steps = step
    result.seconds = time.perf_counter() - started
    return result
