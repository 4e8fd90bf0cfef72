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

from .losses import LossWeights, despecknet_loss
from .model import DeSpeckNet

CHECKPOINT_FORMAT = "despecknet-checkpoint/1"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def bf16_supported() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


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
    def __init__(self, model: DeSpeckNet, weights: LossWeights, lr: float = 1e-3, use_bf16: bool | None = None):
        self.model = model.to(memory_format=torch.channels_last)
        self.weights = weights
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.999))
        self.use_bf16 = bf16_supported() if use_bf16 is None else use_bf16

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _forward(self, noisy: torch.Tensor):
        noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.use_bf16):
            return self.model(noisy)

    def step(self, noisy, target, mask) -> dict[str, float]:
        self.model.train()
        clean, noise = self._forward(noisy)
        loss, parts = despecknet_loss(clean, noise, noisy, target, mask, self.weights)
        if not math.isfinite(parts["total"]):
            raise FloatingPointError("training diverged: the loss is not finite")
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
        for noisy, target, mask in batches:
            clean, noise = self._forward(noisy)
            _, parts = despecknet_loss(clean, noise, noisy, target, mask, self.weights)
            w = float(mask.sum())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * w
            total_weight += w
        return {k: v / max(total_weight, 1.0) for k, v in sums.items()}


def save_checkpoint(path: str, model: DeSpeckNet, record: TrainingRecord) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state, "training": asdict(record)}, path)


def load_checkpoint(path: str) -> tuple[DeSpeckNet, TrainingRecord]:
    from .errors import DespeckNetError

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DespeckNetError(f"{path} is not a readable PyTorch checkpoint ({exc}).") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise DespeckNetError(
            f"{path} is not a deSpeckNet checkpoint (expected format {CHECKPOINT_FORMAT}); "
            "use a .pt file written by despecknet:train or despecknet:finetune."
        )
    model = DeSpeckNet()
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise DespeckNetError(f"{path} does not fit the deSpeckNet architecture: {exc}") from exc
    return model, TrainingRecord(**data.get("training", {}))
