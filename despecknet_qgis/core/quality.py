"""Quality of a despeckled raster, streamed by windows.

`quality_metrics` compares a despeckled raster X_hat with its noisy original Y and,
when given, a clean reference X. All values are converted to intensity first.
No-reference: MoR and VoR of the ratio image Y / X_hat (optionally written as a raster).
With a reference: PSNR after the paper's 8-bit scaling (both images scaled by the
reference's min and max), PSNR and SSIM on dB values, SSIM on the 8-bit images,
despeckling gain DG, edge preservation EPI (Sobel), and C_NN at given strong
scatterers for X_hat and X. Windows carry a margin for the SSIM and Sobel filters, so
the numbers equal a whole-image computation.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import domain as dm
from . import metrics as mt
from .errors import InputError, translate_errors
from .files import check_outputs
from .model_info import inherited, provenance
from .progress import SILENT, Progress
from .raster import Outputs, RasterOutput, Window, check_bands, gdal_cache_limit, check_same_grid, open_raster, read_intensity, windows

MARGIN = mt.SSIM_RADIUS + 2


@dataclass
class QualityReport:
    pixels: int
    mor: float
    vor: float
    psnr_8bit: float | None = None
    ssim_8bit: float | None = None
    psnr_db: float | None = None
    ssim_db: float | None = None
    dg: float | None = None
    epi: float | None = None
    c_nn: list = field(default_factory=list)  # (row, col, C_NN of X_hat, C_NN of X or None); NaN at nodata

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class _Band:
    def __init__(self, path, band, domain, what):
        self.ds = open_raster(path)
        self.band = self.ds.GetRasterBand(check_bands(self.ds, [band], path)[0])
        self.domain, self.name = domain, f"{what} {path}"

    def intensity(self, win):
        return read_intensity(self.band, win, self.domain, source=self.name)  # the raster at fault, by name


@translate_errors
@gdal_cache_limit()
def quality_metrics(
    despeckled: str,
    noisy: str,
    reference: str | None = None,
    band: int = 1,
    domain: str = "intensity",
    points: list[tuple[int, int]] | None = None,
    ratio_output: str | None = None,
    window: int = 512,
    progress: Progress = SILENT,
) -> QualityReport:
    """Quality numbers of `despeckled` against `noisy` and, when given, a clean `reference`.

    Args:
        despeckled, noisy, reference: rasters on the same grid; band: 1-based band of each;
        domain: what their values are. points: (row, col) pixels of strong scatterers for
        C_NN. ratio_output: optional raster of Y / X_hat. window: streaming window.

    Returns:
        QualityReport (None for the full-reference numbers without a reference).

    Raises:
        InputError (grids differ, no common valid pixel, a point outside the raster),
        OutputError (ratio_output checked before any work), Cancelled.
    """
    dm.check_domain(domain, despeckled, noisy, *([reference] if reference else []))
    check_outputs({"ratio_output": ratio_output}, {"despeckled": despeckled, "noisy": noisy, "reference": reference})
    est = _Band(despeckled, band, domain, "`despeckled`")
    noi = _Band(noisy, band, domain, "`noisy`")
    ref = _Band(reference, band, domain, "`reference`") if reference else None
    check_same_grid(est.ds, est.name, noi.ds, noi.name)
    if ref is not None:
        check_same_grid(est.ds, est.name, ref.ds, ref.name)
    width, height = est.ds.RasterXSize, est.ds.RasterYSize
    for k, (row, col) in enumerate(points or []):
        if not (0 <= row < height and 0 <= col < width):
            raise InputError(f"`points` number {k + 1} is at pixel (row {row}, column {col}), outside the "
                             f"{width}x{height} raster: give points inside it.")
    tiles = windows(width, height, window)
    steps = len(tiles) * (2 if ref is not None else 1)
    done = 0

    lo = hi = lo_db = hi_db = None
    if ref is not None:
        lo, hi = math.inf, -math.inf
        for win in tiles:
            progress.check()
            x, valid = ref.intensity(win)
            valid &= x > 0
            if valid.any():
                lo, hi = min(lo, float(x[valid].min())), max(hi, float(x[valid].max()))
            done += 1
            progress.set(100.0 * done / steps)
        if not math.isfinite(lo):
            raise InputError(f"`reference` {reference} has no valid positive pixel.")
        lo_db, hi_db = 10 * math.log10(lo), 10 * math.log10(hi)

    ratio = mt.RatioStats()
    sums = dict(n=0, n_ssim=0, se8=0.0, ssim8=0.0, sedb=0.0, ssimdb=0.0, se_noisy=0.0, se_est=0.0, grad_est=0.0,
                grad_ref=0.0)
    # the input's own metadata (a product's mission, dates) without the despeckling's provenance items
    meta = inherited(est.ds.GetMetadata())
    meta.update(provenance("despecknet:quality", despeckled, content="ratio image Y / X_hat",
                           noisy=os.path.basename(str(noisy)), band=band))
    name = " ".join(["Y / X_hat", est.band.GetDescription()]).strip()  # "Y / X_hat VV", as temporallabel's "stable VV"
    outputs = Outputs((lambda: RasterOutput(ratio_output, est.ds, 1, [float("nan")], argument="ratio_output",
                                            descriptions=[name], metadata=meta)) if ratio_output else None)
    with outputs as (out,):
        for win in tiles:
            progress.check()
            outer = win.grown(MARGIN, width, height)
            inner = win.within(outer)
            xh, v1 = est.intensity(outer)
            y, v2 = noi.intensity(outer)
            valid = v1 & v2 & (xh > 0) & (y > 0)  # an undeclared zero of Y is no speckle sample (a GRD border)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.where(valid, y / xh, np.nan)
            ratio.add(r[inner])
            if out is not None:
                out.write(1, win, r[inner])
            if ref is not None:
                x, v3 = ref.intensity(outer)
                valid &= v3 & (x > 0) & (y > 0)
                # Outside the valid area, filters see the reference itself: no made-up edges.
                xh_f, y_f = np.where(valid, xh, x), np.where(valid, y, x)
                e8, x8 = mt.to_8bit(xh_f, lo, hi), mt.to_8bit(x, lo, hi)
                edb, xdb = 10 * np.log10(np.maximum(xh_f, 1e-30)), 10 * np.log10(np.maximum(x, 1e-30))
                keep = valid[inner]
                # Local measures count only where their whole neighbourhood is valid: the reference's fill
                # beside nodata (a GRD's swath edge) entered both images' gradients and SSIM windows and
                # pulled EPI toward 1 (0.48 -> 0.88 beside a 40-column border).
                near_sobel, near_ssim = (mt.valid_neighbourhood(valid, r)[inner] for r in (1, mt.SSIM_RADIUS))
                s8 = mt.ssim_map(e8, x8, 255.0)[inner][near_ssim]
                sdb = mt.ssim_map(edb, xdb, hi_db - lo_db)[inner][near_ssim]
                sums["n"] += int(keep.sum())
                sums["n_ssim"] += int(near_ssim.sum())
                sums["se8"] += float(((e8 - x8)[inner][keep] ** 2).sum())
                sums["sedb"] += float(((edb - xdb)[inner][keep] ** 2).sum())
                sums["ssim8"] += float(s8.sum())
                sums["ssimdb"] += float(sdb.sum())
                sums["se_noisy"] += float(((y_f - x)[inner][keep] ** 2).sum())
                sums["se_est"] += float(((xh_f - x)[inner][keep] ** 2).sum())
                sums["grad_est"] += float(mt.sobel_magnitude(xh_f)[inner][near_sobel].sum())
                sums["grad_ref"] += float(mt.sobel_magnitude(x)[inner][near_sobel].sum())
            done += 1
            progress.set(100.0 * done / steps)
        if ratio.count == 0:
            raise InputError("`despeckled` and `noisy` share no valid pixel: nothing to measure.")
        outputs.commit()

    report = QualityReport(pixels=ratio.count, mor=ratio.mean, vor=ratio.variance)
    if ref is not None:
        n = sums["n"]
        if n == 0:
            raise InputError("`despeckled`, `noisy` and `reference` share no valid pixel.")
        # a constant reference has no range to scale to 8 bits: both 8-bit figures are undefined then
        n_ssim = sums["n_ssim"]  # none: no valid pixel has a whole SSIM window of valid pixels around it
        report.psnr_8bit = mt.psnr(sums["se8"] / n) if hi > lo else math.nan
        report.ssim_8bit = sums["ssim8"] / n_ssim if hi > lo and n_ssim else math.nan
        report.psnr_db = mt.psnr(sums["sedb"] / n, hi_db - lo_db)
        report.ssim_db = sums["ssimdb"] / n_ssim if n_ssim else math.nan
        report.dg = mt.despeckling_gain(sums["se_noisy"] / n, sums["se_est"] / n)
        report.epi = mt.epi_from_gradients(sums["grad_est"], sums["grad_ref"])
    for row, col in points or []:
        win = Window(col, row, 1, 1).grown(1, width, height)
        xh, valid = est.intensity(win)
        r, c = row - win.y, col - win.x
        value_ref = None
        if ref is not None:
            x, valid_ref = ref.intensity(win)
            value_ref = mt.c_nn(x, r, c, valid_ref)
        report.c_nn.append((row, col, mt.c_nn(xh, r, c, valid), value_ref))
    return report
