"""Phase 2 guards: what tuning may change, and a no-reference rule for keeping its result.

Phase 2 has no clean reference, and its loss is minimised by X_hat = Y, so the loss
cannot say whether tuning helped. The ratio image R = Y / X_hat can: where X_hat is
right, R is the speckle itself, and pure speckle has known statistics whatever the
scene. Two departures are measured on ln R (robust to bright targets):

- spread: var(ln R) against trigamma(L), the variance of ln N for L-look Gamma speckle.
  Spatial correlation does not change a pixel's marginal law, so this holds for SLC and
  GRD data alike. Too small: X_hat kept speckle. Too large: X_hat removed signal.
- structure: signal left in R is spatially coherent, speckle is not beyond its short
  correlation length. The variance of cell means of ln R, times the cell size, is the
  same for 4x4 and 8x8 cells when R holds only speckle whose correlation is shorter than
  a cell; structure makes it grow with the cell size. The index is the relative growth.

The rule (choose_weights) uses the spread, which needs the number of looks L:
- the base model already fits the image when its spread is within FIT_TOLERANCE of 1:
  then tuning is discarded and only the radiometric gain is applied. Tuning a model
  that fits cost 1.0 to 2.1 dB of PSNR on simulations (0.7 dB when only the BatchNorm
  scales and shifts and the last layers were tuned, which then no longer helped a
  model that did not fit);
- otherwise the tuned weights are kept when their spread is closer to 1 than the base's.
The structure index is logged for the user but not used: on correlated speckle it did
not rank base and tuned models the way PSNR against the truth did.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .domain import LOG_SCALE

MARGIN = 12  # block borders are seen with less context: left out


@dataclass
class RatioScore:
    log_ratio_variance: float  # var(ln R)
    spread: float | None  # var(ln R) / trigamma(L), 1 for pure L-look speckle; None when L is unknown
    structure: float  # 0 for speckle without structure beyond 4 pixels
    pixels: int

    @property
    def misfit(self) -> float:
        """|ln(spread)|: 0 when the ratio image spreads exactly like L-look speckle."""
        return abs(float(np.log(self.spread))) if self.spread else float("inf")

    def describe(self) -> str:
        spread = f"var(ln R)/trigamma(L) {self.spread:.3f}, " if self.spread is not None else ""
        return f"{spread}ratio structure {self.structure:.3f}"


class _CellMoments:
    """Pooled variance of means over fully valid k x k cells (deviations from each block's own mean)."""

    def __init__(self, k: int):
        self.k, self.sum_sq, self.count = k, 0.0, 0

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        k = self.k
        h, w = (values.shape[0] // k) * k, (values.shape[1] // k) * k
        if h == 0 or w == 0:
            return
        v = values[:h, :w].reshape(h // k, k, w // k, k)
        ok = valid[:h, :w].reshape(h // k, k, w // k, k).all(axis=(1, 3))
        if ok.sum() < 2:
            return
        means = v.mean(axis=(1, 3))[ok]
        self.sum_sq += float(((means - means.mean()) ** 2).sum())
        self.count += int(ok.sum()) - 1

    @property
    def variance(self) -> float:
        return self.sum_sq / self.count if self.count else float("nan")


def ratio_score(blocks, looks: float | None) -> RatioScore:
    """Score (noisy z, clean z, valid) blocks in the network's log domain; see the module docstring."""
    from scipy.special import polygamma

    total, total_sq, n = 0.0, 0.0, 0
    cells4, cells8 = _CellMoments(4), _CellMoments(8)
    for z, clean, valid in blocks:
        inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN)) if min(z.shape) > 4 * MARGIN else (slice(None),) * 2
        log_ratio = LOG_SCALE * (z[inner].astype(np.float64) - clean[inner])
        ok = valid[inner]
        sel = log_ratio[ok]
        total += float(sel.sum())
        total_sq += float((sel**2).sum())
        n += sel.size
        cells4.add(log_ratio, ok)
        cells8.add(log_ratio, ok)
    if n < 2:
        return RatioScore(float("nan"), None, float("nan"), n)
    variance = total_sq / n - (total / n) ** 2
    structure = (64.0 * cells8.variance) / (16.0 * cells4.variance) - 1.0
    spread = variance / float(polygamma(1, looks)) if looks else None
    return RatioScore(variance, spread, float(structure), n)


def score_model(model, block_images, looks: float | None) -> RatioScore:
    """ratio_score of `model`'s clean branch on (z, valid) blocks."""
    import torch

    def predicted():
        model.eval()
        with torch.no_grad():
            for z, valid in block_images:
                yield z, model.clean(torch.from_numpy(z)[None, None]).numpy()[0, 0], valid

    return ratio_score(predicted(), looks)


FIT_TOLERANCE = 1.25


def choose_weights(model, base_state, source, looks, calibrate, progress) -> dict:
    """After tuning: keep the tuned weights or go back to the base ones (see the module docstring).

    `base_state` is the base model's state_dict, `calibrate(model, source)` folds the
    radiometric gain in and returns it (None: no calibration). Returns what the training
    record should say about the choice.
    """
    import copy

    candidates, gains, scores = {}, {}, {}
    for name, state in (("base", base_state), ("tuned", copy.deepcopy(model.state_dict()))):
        model.load_state_dict(state)
        gains[name] = calibrate(model, source) if calibrate else 1.0
        scores[name] = score_model(model, source.block_images(), looks)
        candidates[name] = copy.deepcopy(model.state_dict())
        progress.info(f"ratio image with the {name} weights: {scores[name].describe()}")
    if looks is None:
        kept, why = "tuned", "the number of looks is unknown, so the ratio image cannot be judged: tuned weights kept"
    elif scores["base"].misfit <= np.log(FIT_TOLERANCE):
        kept, why = "base", "the base model already fits this image's speckle: tuning discarded, gain only"
    elif scores["tuned"].misfit < scores["base"].misfit:
        kept, why = "tuned", "the tuned weights explain the speckle better than the base ones"
    else:
        kept, why = "base", "tuning did not bring the ratio image closer to speckle: base weights kept, gain only"
    model.load_state_dict(candidates[kept])
    progress.info(f"phase 2: {why}")
    return {"kept": kept, "why": why, "radiometric_gain": gains[kept],
            "ratio": {k: {"spread": v.spread, "structure": v.structure} for k, v in scores.items()}}

