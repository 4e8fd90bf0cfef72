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

The rule uses the spread, which needs the number of looks L, and the mean of R:
- the base model already fits the image when its spread lies in FIT_RANGE and its mean ratio
  is not above MOR_MAX (checked before tuning): then it is left exactly as it is, without
  even the radiometric gain. The range
  reaches further below 1 than above: where speckle is spatially correlated, no
  despeckler tells its finest grains from texture, and the best model keeps some of them
  in X_hat. The bundled model, ahead of every peer on GRD-like data (4.9 correlated
  looks), leaves a spread of 0.66 there; tuning it raised that to 0.71 and cost 0.53 dB
  (make bench-quality, session 5). A model trained on 5-look white speckle and applied to
  1-look correlated data leaves 0.51, and tuning gains it 3 dB. The gain is left out
  because where X_hat keeps a little correlated speckle, Y/X_hat is lowest where the
  speckle is highest, so mean(Y/X_hat) falls below 1 (0.95 on SLC-like data) although
  X_hat is not too bright, and the gain cost 0.12 dB there while it brought at most
  0.02 dB elsewhere (make bench-quality, session 2). Tuning a model that fits cost 1.0
  to 2.1 dB of PSNR on simulations (0.7 dB when only the BatchNorm scales and shifts and
  the last layers were tuned, which then no longer helped a model that did not fit);
- otherwise the tuned weights are kept when their spread is closer to 1 than the base's;
  if they are not, the base is kept, with its radiometric gain only when its mean ratio is
  above GAIN_TOLERANCE (X_hat too dark; a ratio below 1 is what kept speckle gives).
The structure index is logged for the user but not used: on correlated speckle it did
not rank base and tuned models the way PSNR against the truth did.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .domain import LOG_SCALE, Z_LIMIT

MARGIN = 12  # block borders are seen with less context: left out


@dataclass
class RatioScore:
    log_ratio_variance: float  # var(ln R)
    spread: float | None  # var(ln R) / trigamma(L), 1 for pure L-look speckle; None when L is unknown
    structure: float  # 0 for speckle without structure beyond 4 pixels
    pixels: int
    mean_ratio: float = 1.0  # MoR, mean of R as despeckle's output has it (point targets restored: R = 1 there)
    gain: float | None = None  # the radiometric gain that brings that mean to 1 (None given: mean_ratio)

    def __post_init__(self):
        if self.gain is None:
            self.gain = self.mean_ratio

    @property
    def misfit(self) -> float:
        """|ln(spread)|: 0 when the ratio image spreads exactly like L-look speckle."""
        return abs(float(np.log(self.spread))) if self.spread else float("inf")

    def describe(self) -> str:
        spread = f"var(ln R)/trigamma(L) {self.spread:.3f}, " if self.spread is not None else ""
        return f"{spread}mean ratio {self.mean_ratio:.3f}, ratio structure {self.structure:.3f}"


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

    kept: list[np.ndarray] = []
    cells4, cells8 = _CellMoments(4), _CellMoments(8)
    for z, clean, valid in blocks:
        inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN)) if min(z.shape) > 4 * MARGIN else (slice(None),) * 2
        log_ratio = LOG_SCALE * (z[inner].astype(np.float64) - clean[inner])
        # valid zeros (another nodata declared) sit at the clip, ln 0: no speckle to judge (1 % of them took
        # the bundled model's spread from 0.92 to 3.1, "does not fit")
        ok = valid[inner] & (z[inner] > -Z_LIMIT)
        kept.append(log_ratio[ok])
        cells4.add(log_ratio, ok)
        cells8.add(log_ratio, ok)
    values = np.concatenate(kept) if kept else np.zeros(0)  # at most block_images' SCORED_PIXELS
    n = values.size
    mean_ratio, gain = output_mean_ratio(values, looks)
    if n < 2:
        return RatioScore(float("nan"), None, float("nan"), n, mean_ratio, gain)
    variance = float(values.var())
    structure = (64.0 * cells8.variance) / (16.0 * cells4.variance) - 1.0
    spread = variance / float(polygamma(1, looks)) if looks else None
    return RatioScore(variance, spread, float(structure), n, mean_ratio, gain)


def output_mean_ratio(log_ratio: np.ndarray, looks: float | None) -> tuple[float, float]:
    """(mean of R = Y / X_hat as despeckle's output will have it, the gain that brings it to 1).

    Despeckle gives a point target its measured intensity (point_targets), so R is 1 there. Where R is
    beyond what L-look speckle reaches at the point-target test's false-alarm rate, it counts as 1: a
    weak model left 0.6 % of such pixels, which held a third of mean(R); its gain of 2.24 made the output
    1.7 dB brighter than the image once those pixels were restored. Without looks, the plain mean.
    """
    if not log_ratio.size:
        return 1.0, 1.0
    ratio = np.exp(log_ratio)
    if not looks:
        value = float(ratio.mean())
        return value, value
    from scipy.special import gammaincinv

    from .point_targets import DEFAULT_PFA

    limit = float(gammaincinv(looks, 1.0 - DEFAULT_PFA)) / looks
    capped = lambda g: float(np.where(ratio > g * limit, 1.0, ratio / g).mean())  # noqa: E731 - after a gain g
    gain = float(ratio.mean())
    for _ in range(20):  # g <- g * mean(after g): a few steps settle it to 1e-6
        step = capped(gain)
        gain *= step
        if abs(step - 1.0) < 1e-6:
            break
    return capped(1.0), gain


def score_model(model, block_images, looks: float | None) -> RatioScore:
    """ratio_score of `model`'s clean branch on (z, valid) blocks."""
    import torch

    def predicted():
        model.eval()
        with torch.no_grad():
            for z, valid in block_images:
                yield z, model.clean(torch.from_numpy(z)[None, None]).numpy()[0, 0], valid

    return ratio_score(predicted(), looks)


FIT_RANGE = (0.6, 1.25)  # var(ln R) / trigamma(L) of a base model that is left as it is
# A base kept after tuning failed gets its radiometric gain only when its mean ratio is off by more
# than this factor: the gain equalises the arithmetic mean, which PSNR on dB values does not reward;
# a gain of 0.975 cost 0.11 dB on 2-look amplitude data (make bench-quality, session 5), while a
# model trained for other looks can be off by 1.4x (tests/test_fine_tune.py's 5-look model).
GAIN_TOLERANCE = 1.1
# A base whose mean ratio is above this does not fit, whatever its spread. Keeping part of the
# speckle can only lower mean(Y/X_hat) (for unit-mean speckle N, E[N^a] <= 1 when 0 <= a <= 1), so
# a mean ratio well above 1 means X_hat is too dark or too smooth. The bundled models leave 0.86 to
# 0.98 on every benchmark scene; a model trained on 5-look white speckle leaves 1.28 and 1.30 on
# 1-look speckle with correlation 0.3 and 0, with a spread of 0.72 and 0.73 that FIT_RANGE accepts,
# and tuning it gains 1.2 and 1.5 dB there (tests/test_fine_tune.py).
MOR_MAX = GAIN_TOLERANCE


@dataclass
class Candidate:
    """Weights with their radiometric gain folded in, and the ratio image they give."""

    state: dict
    gain: float
    score: RatioScore
    uncalibrated: dict | None = None  # the same weights before the gain was folded in

    @property
    def fits(self) -> bool:
        """The ratio image spreads like L-look speckle (within FIT_RANGE) and its mean is not above MOR_MAX."""
        return (self.score.spread is not None and FIT_RANGE[0] <= self.score.spread <= FIT_RANGE[1]
                and self.score.mean_ratio <= MOR_MAX)


def calibrated_candidate(model, state, source, looks, calibrate) -> Candidate:
    """Load `state` into `model`, score it and fold its gain in (`calibrate(model, source, gain)`, or none).

    One pass over the image: the gain is the score's mean ratio, and the spread and
    structure of ln R do not change when the gain shifts ln R by a constant.
    """
    import copy

    model.load_state_dict(state)
    uncalibrated = copy.deepcopy(model.state_dict())
    score = score_model(model, source.block_images(), looks)
    gain = calibrate(model, source, score.gain) if calibrate else 1.0
    return Candidate(copy.deepcopy(model.state_dict()), gain, score, uncalibrated)


def record_choice(model, kept: str, why: str, candidates: dict, progress) -> dict:
    """Load the kept candidate into `model`; return what the training record says about the choice."""
    model.load_state_dict(candidates[kept].state)
    progress.info(f"phase 2: {why}")
    return {"kept": kept, "why": why, "radiometric_gain": candidates[kept].gain,
            "ratio": {k: {"spread": c.score.spread, "structure": c.score.structure} for k, c in candidates.items()}}


def as_it_was(base: Candidate) -> Candidate:
    """The base weights without their radiometric gain."""
    return Candidate(base.uncalibrated or base.state, 1.0, base.score, base.uncalibrated)


def keep_base(model, base: Candidate, progress) -> dict:
    """The base already fits (checked before tuning): the model stays exactly as it was (see the module docstring)."""
    return record_choice(model, "base", "the base model already fits this image's speckle: kept as it is (not tuned, "
                         f"no gain; mean ratio {base.score.mean_ratio:.3f})", {"base": as_it_was(base)}, progress)


def choose_weights(model, base: Candidate, source, looks, calibrate, progress) -> dict:
    """After tuning: keep the tuned weights when their ratio image is closer to speckle than the base's."""
    tuned = calibrated_candidate(model, model.state_dict(), source, looks, calibrate)
    progress.info(f"ratio image with the tuned weights: {tuned.score.describe()}")
    candidates = {"base": base, "tuned": tuned}
    if looks is None:
        return record_choice(model, "tuned", "the number of looks is unknown, so the ratio image cannot be judged: "
                             "tuned weights kept", candidates, progress)
    if tuned.score.misfit < base.score.misfit:
        return record_choice(model, "tuned", "the tuned weights explain the speckle better than the base ones",
                             candidates, progress)
    # Only a base that is too dark gets its gain: kept speckle lowers the mean ratio of an X_hat that is
    # not too bright (see the module docstring); a gain of 0.906 cost 0.43 dB on 1-look data.
    if base.gain > GAIN_TOLERANCE:
        how = f"with the radiometric gain {base.gain:.3f}"
    else:
        candidates["base"] = as_it_was(base)
        how = f"as they were (mean ratio {base.score.mean_ratio:.3f}, within {GAIN_TOLERANCE:g}x of 1: no gain)"
    return record_choice(model, "base", "tuning did not bring the ratio image closer to speckle: base weights kept "
                         f"{how}", candidates, progress)
