"""Radiometric domains and the network's normalised log-intensity domain.

Users hand us intensity (sigma0, DN^2, ...), amplitude or decibels at any calibration
scale. The network sees z = (ln I - offset) / LOG_SCALE where `offset` is the mean of
ln I over the valid pixels of the whole band. Scaling the image by k shifts ln I and
the offset by the same ln k, so z, and the despeckled result relative to k, do not
change: despeckle(k * Y) = k * despeckle(Y) exactly, for any calibration.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import InputError

DOMAINS = ("intensity", "amplitude", "decibel")
LOG_SCALE = 2.0
# z beyond this is clipped: keeps ln(0) and absurd outliers finite (e^{+-20} around the mean).
Z_LIMIT = 10.0


RECORDED_DOMAIN_KEY = "DESPECKNET_OUTPUT_DOMAIN"  # what the plugin's own raster outputs are written in


def check_domain(domain: str, *inputs) -> str:
    """`domain` itself, checked; and against `inputs` (paths or dataset names), which another domain would
    silently misread: a Sentinel-1 product is read as its calibrated intensity (sigma0 0.03 was taken for dB),
    and the plugin's own outputs record theirs (a dB output read as intensity gave ENL 2435 for 24)."""
    if domain not in DOMAINS:
        raise InputError(f"Unknown input `domain` {domain!r}: use one of {', '.join(DOMAINS)}.")
    if not inputs:
        return domain
    from .sentinel1 import is_sentinel1_input

    for path in inputs:
        if not isinstance(path, str) or not path:
            continue
        if is_sentinel1_input(path):
            if domain != "intensity":
                raise InputError(f"{path} is a Sentinel-1 product, which this plugin reads as its calibrated "
                                 "intensity (sigma0 = DN^2 / A^2, whatever the name's :AMPLITUDE or :INTENSITY "
                                 f"ending): its domain is intensity, not {domain}. Set the input domain to intensity.")
            continue
        recorded = recorded_domain(path)
        if recorded in DOMAINS and recorded != domain:
            raise InputError(f"{path} is an output of this plugin written in {recorded} (its {RECORDED_DOMAIN_KEY}), "
                             f"not {domain}: set the input domain to {recorded}, or give inputs of one domain per run.")
    return domain


def recorded_domain(path: str) -> str | None:
    """The domain a raster output of this plugin records, or None (another raster, or not a raster)."""
    if os.path.isdir(path) or (not os.path.exists(path) and not path.startswith("/vsi") and ":" not in path):
        return None
    from .raster import open_quietly

    ds = open_quietly(path)
    return ds.GetMetadataItem(RECORDED_DOMAIN_KEY) if ds is not None else None


def to_intensity(values: np.ndarray, domain: str) -> np.ndarray:
    """Values as intensity; an overflow gives inf, which the readers refuse (raster.check_intensity_finite)."""
    with np.errstate(over="ignore"):
        return _to_intensity(values, domain)


def _to_intensity(values: np.ndarray, domain: str) -> np.ndarray:
    v = values.astype(np.float64, copy=False)
    if domain == "intensity":
        return v
    if domain == "amplitude":
        return v * v
    if domain == "decibel":
        return np.power(10.0, v / 10.0)
    raise InputError(f"Unknown input `domain` {domain!r}.")


def from_intensity(intensity: np.ndarray, domain: str) -> np.ndarray:
    if domain == "intensity":
        return intensity
    if domain == "amplitude":
        return np.sqrt(intensity)
    if domain == "decibel":
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(intensity)
    raise InputError(f"Unknown input `domain` {domain!r}.")


def speckle_from_log(z_noise: np.ndarray, domain: str) -> np.ndarray:
    """Estimated speckle N_hat (mean about 1) expressed like the input: N, sqrt(N) or dB."""
    return from_intensity(np.exp(LOG_SCALE * z_noise.astype(np.float64)), domain)


def log_intensity(intensity: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(intensity)


def normalise(intensity: np.ndarray, offset: float) -> np.ndarray:
    """Intensity -> network input z (float32). Zeros map to -Z_LIMIT, not -inf."""
    z = (log_intensity(intensity) - offset) / LOG_SCALE
    return np.clip(z, -Z_LIMIT, Z_LIMIT).astype(np.float32)


def network_input(intensity: np.ndarray, valid: np.ndarray, offset: float) -> np.ndarray:
    """Normalised z with invalid pixels at 0, the band's mean level: the same whatever the nodata value."""
    z = normalise(intensity, offset)
    z[~valid] = 0.0
    return z


def denormalise(z: np.ndarray, offset: float) -> np.ndarray:
    """Network output z -> intensity (float64, always positive)."""
    return np.exp(LOG_SCALE * z.astype(np.float64) + offset)


def log_speckle_mean(looks: float) -> float:
    """E[ln N] for L-look Gamma speckle (mean 1): digamma(L) - ln(L); spatial correlation does not change it."""
    from scipy.special import digamma

    return float(digamma(looks) - np.log(looks))


class LogMean:
    """Streaming mean of ln(intensity) over valid, strictly positive pixels."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, intensity: np.ndarray, valid: np.ndarray) -> None:
        sel = intensity[valid & (intensity > 0)]
        if sel.size:
            self.total += float(np.log(sel).sum())
            self.count += int(sel.size)

    def merge(self, other: "LogMean") -> None:
        """Add another part's pixels (parts merged in a fixed order give a fixed result)."""
        self.total += other.total
        self.count += other.count

    @property
    def value(self) -> float:
        if not self.count:
            raise InputError("No valid pixel with a positive value: nothing to despeckle.")
        return self.total / self.count
