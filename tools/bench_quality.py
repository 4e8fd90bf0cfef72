"""Quality benchmark: the plugin's model(s) and real peer despecklers side by side, in one run.

    make bench-quality                      # full run (about 15 to 20 minutes on 2 busy cores)
    .venv/bin/python tools/bench_quality.py --quick             # 2 small regimes, 2 real dates
    .venv/bin/python tools/bench_quality.py --candidate new=build/model.onnx --no-finetune

Scenes
- Simulated (core/simulate.py, realistic=True: textured fields, gradual variations, roads,
  an urban block, deterministic point targets 15-40 dB above their field), seeds 70001+
  (training uses 2 and 1002). Reference = E[Y] (`scene.reference(correlation)`). Regimes:
  1-look white; GRD-like 4.9 looks correlated (0.7) with a nodata border (declared nodata 0,
  excluded from every metric; the generator averages round(L) = 5 correlated looks);
  SLC-like 1 look correlated (0.8); amplitude input, 2 looks (the plugin is given amplitudes,
  INPUT domain amplitude); DN^2: the GRD-like observation x 1e4, given as intensity.
- Real (`../shared/data/s1_single_look`, never committed; skipped with a message when
  absent): each single-look date of a site against the intensity mean of the site's other
  K = 4 dates. The reference's speckle is independent of the scored date, so methods rank
  correctly. mean X_hat/X uses that mean as it is (it is unbiased in intensity). EPI is not
  given there: its denominator, the sum of |Sobel| of the reference, is inflated by the
  reference's own speckle, which no mean removes (a perfect X_hat scores 0.16 against a 4-date
  mean, the unfiltered date 0.23, a 5x5 box filter 0.44: it ranks noisier outputs higher;
  audit 28, session 16). dB metrics (PSNR, SSIM) use it debiased for the log domain: the mean of K
  independent 1-look intensities has E[ln] = ln X + psi(K) - ln K (-0.565 dB for K = 4),
  so the reference's dB values are raised by that much (reference x exp(-(psi(K) - ln K))).
  Its own residual speckle (ENL about 4) adds the same error to every method, so absolute
  PSNR is low and differences are compressed, but the ranking holds.
  Every method despeckles the whole 256x256 date, but only rows 128-255 are scored: the
  model may be trained on rows 0-127 of these dates (tools/real_data.py, make_model.py
  --real-fraction), never on the scored rows.
  `--real-dir DIR --real-sites a,b,c` scores other sites laid out the same way (SITE_1.npy ..
  SITE_5.npy, single-look amplitudes); a site that training never used is scored on every
  row. Sites that training never saw are the fair test of how the model generalises (model
  card, "Three real sites the model never saw").

Methods
- deSpeckNet, bundled model (models/despecknet.onnx) through the plugin's core
  (Despeckler + despeckle_raster, as despecknet:despeckle runs it); any `--candidate` ONNX.
- Phase 2: the bundled model tuned on each scene with the defaults of despecknet:finetune
  (single-look preset for 1-look data, multi-look otherwise; LOOKS from the preset), then
  despeckled with the tuned model. Off with --no-finetune.
- Peers (tools/setup_peers.sh installs them; none is in the plugin's environment):
  OTB otbcli_Despeckle Lee, Frost, Gamma-MAP and Kuan (5x5 window, nblooks estimated from
  the image); homomorphic BM3D on ln I with white noise (sigma from the image's most
  homogeneous windows) and with coloured noise (the log-speckle spectrum measured on the
  same windows); SAR2SAR from deepdespeckling. The last three run in build/peers-venv
  (tools/bench_peers.py). Peers get nodata filled with the nearest valid value (none of
  them handles nodata) and intensities (SAR2SAR: amplitudes) of the same data.
  A peer that is not installed is reported unavailable, with the reason.

Metrics (over valid pixels; core/metrics.py and core/quality.py)
PSNR and SSIM on dB values (quality_metrics), mean(X_hat)/mean(X), ENL (median over the
homogeneous parcels of the scene, eroded by 4 pixels; real: the 8 most homogeneous 16x16
windows of the reference), MoR and VoR of Y/X_hat (whole image), EPI, mean C_NN at the
point targets (simulated: the scene's targets; real: the reference's brightest isolated
maxima), delta_h (ratio-image structure) and M of Gomez et al. 2017, seconds.
Writes build/bench-quality/report.md and one quick-look PNG per scene (dB, a 160x160 crop,
every method side by side, labelled).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special
from scipy.optimize import brentq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from despecknet_qgis.core import metrics as mt  # noqa: E402
from despecknet_qgis.core.quality import quality_metrics  # noqa: E402
from despecknet_qgis.core.quicklook import db_range, db_to_byte, write_png  # noqa: E402
from despecknet_qgis.core.raster import read_band, write_raster  # noqa: E402
from despecknet_qgis.core.simulate import observe, simulate_reflectivity  # noqa: E402
from tools.real_data import available as real_data_available  # noqa: E402
from tools.real_data import REAL_DATES, REAL_DIR, REAL_SITES, TRAIN_ROWS, first_scored_row, leave_one_out, log_bias_of_mean, site_stack  # noqa: E402

OUT = os.path.join(ROOT, "build", "bench-quality")
PEERS_PYTHON = os.path.join(ROOT, "build", "peers-venv", "bin", "python")
METRIC_NODATA = -9999.0
SIZE, QUICK_SIZE = 384, 256
CROP = 160
OTB_RADIUS = 2
OTB_FILTERS = [("lee", "OTB Lee"), ("frost", "OTB Frost"), ("gammamap", "OTB Gamma-MAP"), ("kuan", "OTB Kuan")]
PY_PEERS = [("bm3d_white", "BM3D homomorphic, white"), ("bm3d_psd", "BM3D homomorphic, measured spectrum"),
            ("sar2sar", "SAR2SAR (deepdespeckling)")]
NOISY, REFERENCE, BUNDLED, PHASE2 = "noisy input", "reference", "deSpeckNet bundled", "deSpeckNet bundled + phase 2"
BF16 = "deSpeckNet bundled, bf16"  # the same model on the CPU's fast path (core/bf16.py); the other rows are fp32
ENSEMBLE = "deSpeckNet bundled, self-ensemble"  # despeckle's SELF_ENSEMBLE: four mirrored passes averaged
PEERS = [label for _, label in OTB_FILTERS] + [label for _, label in PY_PEERS]
PEER_VERSIONS = {}

# name, summary column, title, looks, correlation, seed, plugin input domain, nodata border
REGIMES = [
    ("1look_white", "1-look white", "1-look, white speckle", 1.0, 0.0, 70001, "intensity", False),
    ("grd_4.9looks_corr0.7_nodata", "GRD-like", "GRD-like: 4.9 looks, correlated (0.7), nodata border", 4.9, 0.7,
     70002, "intensity", True),
    ("slc_1look_corr0.8", "SLC-like", "SLC-like: 1 look, correlated (0.8)", 1.0, 0.8, 70003, "intensity", False),
    ("amplitude_2looks", "amplitude 2-look", "Amplitude input, 2 looks, white (metrics on intensity)", 2.0, 0.0,
     70004, "amplitude", False),
]
DN2_SCALE = 1e4


@dataclass
class Case:
    name: str
    title: str
    group: str  # column of the summary tables
    noisy: np.ndarray  # intensity Y
    valid: np.ndarray
    reference: np.ndarray  # linear reference (E[Y], or the other dates' mean)
    db_gain: float  # the reference is multiplied by this for the dB metrics
    domain: str  # what the plugin is given
    nodata: float | None
    looks: float  # nominal looks (chooses the phase 2 preset)
    areas: list
    points: list
    crop: tuple
    real: bool = False
    # real dates, per 2 + 2 split of the other dates: points picked on the mean of two, and the mean C_NN
    # of the last two dates' mean at those points (measured once here, it does not depend on the method)
    split_points: list = field(default_factory=list)
    cnn_split_ref: float = float("nan")
    files: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)  # method -> intensity
    seconds: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- scenes --------------------------------------------------------------------------------------------------


def nodata_border(shape):
    """A GRD-like swath edge: a slanted band on the left and a few rows at the bottom."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return ~((xx < 0.06 * w + 0.08 * yy) | (yy >= h - max(4, h // 40)))


def sim_areas(scene, valid):
    areas = []
    hom = scene.homogeneous & valid
    for p in np.unique(scene.parcels[hom]):
        m = ndimage.binary_erosion((scene.parcels == p) & hom, iterations=4)
        if m.sum() >= 300:
            areas.append(m)
    return areas


def usable_points(points, valid):
    h, w = valid.shape
    ok = ndimage.binary_erosion(valid, np.ones((3, 3), bool))
    return [(int(r), int(c)) for r, c in points if 0 < r < h - 1 and 0 < c < w - 1 and ok[r, c]]


def best_crop(shape, points, valid, size=CROP):
    """The crop (on a 16-pixel grid) with the most point targets among those at least 90 % valid."""
    h, w = shape
    size = min(size, h, w)
    best, best_n = (slice(0, size), slice(0, size)), -1
    pts = np.array(points) if points else np.zeros((0, 2))
    for r in range(0, h - size + 1, 16):
        for c in range(0, w - size + 1, 16):
            if valid[r : r + size, c : c + size].mean() < 0.9:
                continue
            n = int(((pts[:, 0] >= r) & (pts[:, 0] < r + size) & (pts[:, 1] >= c) & (pts[:, 1] < c + size)).sum())
            if n > best_n:
                best, best_n = (slice(r, r + size), slice(c, c + size)), n
    return best


def simulated_cases(quick):
    size = QUICK_SIZE if quick else SIZE
    regimes = REGIMES[:2] if quick else REGIMES
    cases = []
    for name, group, title, looks, corr, seed, domain, border in regimes:
        rng = np.random.default_rng(seed)
        scene = simulate_reflectivity((size, size), rng, realistic=True)
        y, ey = observe(scene.reflectivity, scene.targets, looks, corr, rng)
        assert np.allclose(ey, scene.reference(corr))
        valid = nodata_border(y.shape) if border else np.ones(y.shape, bool)
        points = usable_points(np.argwhere(scene.targets > 0), valid)
        case = Case(name, title, group, y, valid, ey, 1.0, domain, 0.0 if border else None, looks,
                    sim_areas(scene, valid), points, best_crop(y.shape, points, valid))
        cases.append(case)
        if name.startswith("grd") and not quick:
            dn = Case("dn2_grd_x1e4", f"DN^2: the GRD-like observation x {DN2_SCALE:g}, given as intensity", "DN^2",
                      y * DN2_SCALE, valid, ey * DN2_SCALE, 1.0, "intensity", 0.0, looks, case.areas, points, case.crop)
            cases.append(dn)
    # keep the regimes' order of the issue: DN^2 last
    return sorted(cases, key=lambda c: c.name.startswith("dn2"))


def bright_points(reference, valid, count=30, min_cnn=6.0):
    """The reference's brightest isolated maxima: 3x3 local maxima at least min_cnn dB above their 8 neighbours."""
    h, w = reference.shape
    ok = ndimage.binary_erosion(valid, np.ones((3, 3), bool))
    ok[0, :] = ok[-1, :] = ok[:, 0] = ok[:, -1] = False
    peak = (reference == ndimage.maximum_filter(reference, 3)) & ok
    order = np.argsort(reference[peak])[::-1]
    cand = np.argwhere(peak)[order]
    out = []
    for r, c in cand:
        if mt.c_nn(reference, r, c) >= min_cnn:
            out.append((int(r), int(c)))
            if len(out) == count:
                break
    return out


def real_cases(real_dir, quick, sites=REAL_SITES, trained_sites=REAL_SITES):
    """Each date against the mean of the others, scored on the rows training never sees (tools/real_data.py)."""
    k = REAL_DATES - 1
    bias = log_bias_of_mean(k)  # E[ln mean of K 1-look intensities] - ln X
    cases = []
    for site in sites:
        first_row = first_scored_row(site, trained_sites)
        stack = site_stack(site, real_dir)
        for d in range(1, REAL_DATES + 1):
            if quick and d > 1:
                break
            y = stack[d - 1]
            ref = leave_one_out(stack, d - 1)
            valid = np.isfinite(y) & (y > 0) & np.isfinite(ref) & (ref > 0)
            # The methods see the whole date; only the held-out rows are scored.
            valid[:first_row] = False
            wins = mt.most_homogeneous_windows(ref, valid, 16, 8)
            areas = []
            for win in wins:
                m = np.zeros(y.shape, bool)
                m[win] = True
                areas.append(m)
            h, w = y.shape
            c0 = max(first_row, h - CROP), (w - CROP) // 2
            rest = [i for i in range(REAL_DATES) if i != d - 1]
            split_points, split_ref = [], []
            for half in itertools.combinations(rest, 2):
                other_half = stack[[i for i in rest if i not in half]].mean(0)
                points = bright_points(stack[list(half)].mean(0), valid)
                split_points.append(points)
                split_ref.append(finite_mean([mt.c_nn(other_half, r, c) for r, c in points]))
            case = Case(f"real_{site}_{d}", f"Real S1 single-look {site} date {d} vs mean of the other {k} dates, "
                        f"rows {first_row}-{h - 1}", f"real {site}", y, valid, ref, math.exp(-bias), "amplitude", None,
                        1.0, areas, bright_points(ref, valid), (slice(c0[0], h), slice(c0[1], c0[1] + CROP)), real=True,
                        split_points=split_points, cnn_split_ref=finite_mean(split_ref))
            cases.append(case)
    return cases, bias


# --- methods -------------------------------------------------------------------------------------------------


def plugin_input(case, path):
    values = np.sqrt(case.noisy) if case.domain == "amplitude" else case.noisy.copy()
    if case.nodata is not None:
        values = np.where(case.valid, values, case.nodata)
    write_raster(path, values.astype(np.float32), nodata=case.nodata)
    return path


def read_plugin_output(case, path):
    v = read_band(path)
    x = v**2 if case.domain == "amplitude" else v
    return np.where(case.valid, x, np.nan)


def run_plugin(case, model, label, workdir, precision="fp32", self_ensemble=False):
    from despecknet_qgis.core.inference import Despeckler
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    out = os.path.join(workdir, f"{label.replace(' ', '_').replace(':', '').replace(',', '')}.tif")
    started = time.perf_counter()
    d = Despeckler(model, "cpu", with_noise=False, precision=precision, self_ensemble=self_ensemble)
    despeckle_raster(case.files["input"], out, d, domain=case.domain)
    return read_plugin_output(case, out), time.perf_counter() - started


def phase2_defaults(single_look):
    """(loss weights, looks) of despecknet:finetune's preset, wherever this version keeps them."""
    try:
        from despecknet_qgis.core.defaults import phase2_preset

        p = phase2_preset("singlelook" if single_look else "multilook")
        return p.weights, p.looks, p.label
    except ImportError:
        pass
    try:
        from despecknet_qgis.algorithms.finetune import PRESETS

        label, weights, looks = PRESETS[1 if single_look else 0]
        return weights, looks, label.split(":")[0]
    except ImportError:
        from despecknet_qgis.core.phases import PRESETS

        return PRESETS["singlelook" if single_look else "multilook"], 1.0 if single_look else 4.4, "preset"


def phase2_job(source, domain, single_look, workdir):
    """Phase 2 as despecknet:finetune runs it with its defaults, then despeckle with the tuned model.

    Runs in a worker process (two at a time, one thread each: the ONNX export is single-threaded
    Python, so two jobs keep both cores busy). Returns (output path, seconds, note).
    """
    import warnings

    import torch

    from despecknet_qgis.core.inference import Despeckler
    from despecknet_qgis.core.phases import fine_tune
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    weights, looks, label = phase2_defaults(single_look)
    onnx = os.path.join(workdir, "phase2.onnx")
    out = os.path.join(workdir, "phase2.tif")
    started = time.perf_counter()
    report = fine_tune(source, onnx, domain=domain, weights=weights, estimate_looks=True, default_looks=looks)
    despeckle_raster(source, out, Despeckler(onnx, "cpu", threads=1, with_noise=False, precision="fp32"),
                     domain=domain)
    note = (f"phase 2: preset {label} (mu {weights.mu:g}, xi {weights.xi:g}, lambda {weights.lambda_tv:g}, "
            f"looks estimated, else {looks:g}), {report.steps} steps")
    return out, time.perf_counter() - started, note


def filled(case):
    """Noisy intensity with nodata replaced by the nearest valid value (for peers that know no nodata)."""
    if case.valid.all():
        return case.noisy
    idx = ndimage.distance_transform_edt(~case.valid, return_distances=False, return_indices=True)
    return case.noisy[tuple(idx)]


def inverse_trigamma(v):
    return brentq(lambda x: float(special.polygamma(1, x)) - v, 1e-3, 1e5)


def estimate_log_speckle(y, valid, size=24, count=12, lags=5):
    """Looks, log-speckle std and power spectrum, measured on the image's own most homogeneous windows.

    Windows: the flattest of a 5x5 mean (mt.most_homogeneous_windows, so texture, not the
    speckle, decides). sigma^2 = median variance of ln Y there; L from trigamma(L) = sigma^2
    (the law of ln of L-look Gamma speckle, whatever its spatial correlation). Spectrum:
    the autocorrelation of ln Y (window means removed) averaged over the windows, lags up
    to +-`lags`, Bartlett-tapered, Fourier-transformed to the image size and scaled as bm3d
    expects (mean of the array = number of pixels x variance).
    """
    wins = mt.most_homogeneous_windows(ndimage.uniform_filter(y, 5), valid, size, count)
    z = np.log(y)
    var = float(np.median([z[w].var(ddof=1) for w in wins]))
    looks = inverse_trigamma(var)
    acc = np.zeros((2 * lags + 1, 2 * lags + 1))
    for w in wins:
        d = z[w] - z[w].mean()
        s = (2 * d.shape[0], 2 * d.shape[1])
        ac = np.real(np.fft.ifft2(np.abs(np.fft.fft2(d, s)) ** 2))
        n = np.real(np.fft.ifft2(np.abs(np.fft.fft2(np.ones_like(d), s)) ** 2))
        ac = np.fft.fftshift(ac / np.maximum(np.round(n), 1))
        cy, cx = s[0] // 2, s[1] // 2
        acc += ac[cy - lags : cy + lags + 1, cx - lags : cx + lags + 1]
    rho = acc / acc[lags, lags]
    taper = 1.0 - np.abs(np.arange(-lags, lags + 1)) / (lags + 1)
    r = var * rho * np.outer(taper, taper)
    h, w = y.shape
    circ = np.zeros((h, w))
    for i, dy in enumerate(range(-lags, lags + 1)):
        for j, dx in enumerate(range(-lags, lags + 1)):
            circ[dy % h, dx % w] = r[i, j]
    spectrum = np.maximum(np.real(np.fft.fft2(circ)), 0.02 * var)
    return looks, math.sqrt(var), spectrum * h * w, float(rho[lags, lags + 1]), float(rho[lags + 1, lags])


def run_otb(case, workdir, looks):
    exe = shutil.which("otbcli_Despeckle")
    if exe is None:
        return {label: "otbcli_Despeckle not found (Debian otb-bin not installed; see "
                       "build/bench-quality/setup_peers.log)" for _, label in OTB_FILTERS}
    src = write_raster(os.path.join(workdir, "peer_input.tif"), filled(case).astype(np.float32))
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="2", OTB_LOGGER_LEVEL="WARNING")
    errors = {}
    for key, label in OTB_FILTERS:
        out = os.path.join(workdir, f"otb_{key}.tif")
        args = [exe, "-in", src, "-out", out, "float", "-filter", key, f"-filter.{key}.rad", str(OTB_RADIUS)]
        if key != "frost":
            args += [f"-filter.{key}.nblooks", f"{looks:.3f}"]
        started = time.perf_counter()
        p = subprocess.run(args, capture_output=True, text=True, env=env)
        if p.returncode != 0 or not os.path.exists(out):
            errors[label] = f"otbcli_Despeckle failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-300:]}"
            continue
        case.results[label] = np.where(case.valid, read_band(out), np.nan)
        case.seconds[label] = time.perf_counter() - started
    return errors


def start_python_peers(cases, workdir, peers_python):
    """Starts tools/bench_peers.py in the peers' venv (it runs beside the plugin's methods); None if impossible."""
    if not os.path.exists(peers_python):
        return None
    job = {"threads": 1, "cases": []}
    for case in cases:
        d = os.path.join(workdir, case.name)
        job["cases"].append({"name": case.name, "intensity": case.files["peer_npy"], "looks": case.files["looks"],
                             "sigma_log": case.files["sigma_log"], "psd": case.files["psd"], "out_dir": d})
    path = os.path.join(workdir, "peers_job.json")
    json.dump(job, open(path, "w"))
    err = open(os.path.join(workdir, "peers_stderr.log"), "w")
    return subprocess.Popen([peers_python, os.path.join(ROOT, "tools", "bench_peers.py"), path],
                            stdout=subprocess.PIPE, stderr=err, text=True)


def finish_python_peers(proc, cases, workdir, peers_python):
    """Waits for bench_peers.py and loads its results; returns {label: reason} for peers that did not run."""
    if proc is None:
        reason = f"{peers_python} missing (tools/setup_peers.sh did not create the peers' venv)"
        return {label: reason for _, label in PY_PEERS}
    stdout, _ = proc.communicate()
    try:
        status = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = open(os.path.join(workdir, "peers_stderr.log")).read().strip()[-300:]
        reason = f"bench_peers.py failed (exit {proc.returncode}): {tail}"
        return {label: reason for _, label in PY_PEERS}
    unavailable = {}
    PEER_VERSIONS.update({k: v for k, v in status.get("versions", {}).items() if v})
    for key, label in PY_PEERS:
        st = status[key]
        if not st["available"]:
            unavailable[label] = st["reason"]
            continue
        for case in cases:
            f = os.path.join(workdir, case.name, f"{key}.npy")
            if case.name in st["seconds"] and os.path.exists(f):
                case.results[label] = np.where(case.valid, np.load(f), np.nan)
                case.seconds[label] = st["seconds"][case.name]
            elif case.name in st["errors"]:
                case.notes.append(f"{label} failed: {st['errors'][case.name]}")
    return unavailable


# --- metrics -------------------------------------------------------------------------------------------------


def write_metric_raster(path, image, valid):
    write_raster(path, np.where(valid, image, METRIC_NODATA).astype(np.float32), nodata=METRIC_NODATA)
    return path


def finite_mean(values):
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def score(case, label, estimate, workdir):
    """Every metric of one method on one scene (valid pixels only)."""
    valid = case.valid
    floor = 1e-9 * float(np.median(case.reference[valid]))
    est = np.where(valid, np.maximum(np.nan_to_num(estimate, nan=floor), floor), 1.0)
    f = write_metric_raster(os.path.join(workdir, "metric_estimate.tif"), est, valid)
    q = quality_metrics(f, case.files["m_noisy"], case.files["m_ref_db"], points=case.points)
    # not on real dates: against a mean of K noisy dates EPI ranks a noisier output higher (module docstring)
    epi = (math.nan if case.real else q.epi if case.db_gain == 1.0 else
           quality_metrics(f, case.files["m_noisy"], case.files["m_ref"]).epi)
    ratio = np.where(valid, case.noisy / est, np.nan)
    delta_h = mt.ratio_structure(ratio, valid, shuffles=4)
    m_index = mt.ratio_first_order([case.noisy[a] for a in case.areas], [ratio[a] for a in case.areas]) + delta_h
    enl = float(np.median([mt.enl(est[a]) for a in case.areas])) if case.areas else float("nan")
    return {
        "psnr": q.psnr_db, "ssim": q.ssim_db, "bias": float(est[valid].mean() / case.reference[valid].mean()),
        "enl": enl, "mor": q.mor, "vor": q.vor, "epi": epi,
        "cnn": finite_mean([c[2] for c in q.c_nn]), "cnn_ref": finite_mean([c[3] for c in q.c_nn]),
        "delta_h": delta_h, "m": m_index,
        **split_cnn(case, est),
    }


def split_cnn(case, estimate):
    """C_NN at points picked on two of the other dates (case.cnn_split_ref: the last two dates' own there).

    The main table picks the points on the reference itself, so its own speckle peaks are
    picked too and its C_NN is inflated; here neither value is measured where it was picked.
    """
    if not case.split_points:
        return {}
    return {"cnn_split": finite_mean([finite_mean([mt.c_nn(estimate, r, c) for r, c in points])
                                      for points in case.split_points])}


# --- report --------------------------------------------------------------------------------------------------

COLUMNS = [("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM dB", "{:.3f}"), ("bias", "mean X̂/X", "{:.3f}"),
           ("enl", "ENL", "{:.1f}"), ("mor", "MoR", "{:.3f}"), ("vor", "VoR", "{:.3f}"), ("epi", "EPI", "{:.3f}"),
           ("cnn", "C_NN dB", "{:.2f}"), ("delta_h", "δh", "{:.2f}"), ("m", "M", "{:.2f}")]
NOT_FOR_REFERENCE = {"psnr", "ssim", "bias", "epi"}


def fmt(key, value, spec):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return spec.format(value)


def method_table(rows, unavailable, seconds=None):
    """rows: [(label, metrics dict)]; seconds: {label: s} or None."""
    head = "| method | " + " | ".join(c[1] for c in COLUMNS) + (" | s |" if seconds is not None else " |")
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1 + (seconds is not None))]
    for label, m in rows:
        if m is None:
            cells = ["unavailable" if label in unavailable else "failed (see notes)"] + [""] * (len(COLUMNS) - 1)
        else:
            cells = [fmt(k, None if (label == REFERENCE and k in NOT_FOR_REFERENCE) or
                         (label == NOISY and k in ("mor", "vor", "delta_h", "m")) else m.get(k), s)
                     for k, _, s in COLUMNS]
        extra = [fmt("s", seconds.get(label), "{:.1f}")] if seconds is not None else []
        lines.append(f"| {label} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def quicklook(case, methods, path):
    """Side-by-side dB panels of the crop, labelled when Pillow is there; returns the labels in order."""
    r, c = case.crop
    panels = [(NOISY, case.noisy), (REFERENCE, case.reference)] + [(m, case.results[m]) for m in methods
                                                                   if m in case.results]
    crops = [(label, np.where(case.valid, img, np.nan)[r, c]) for label, img in panels]
    lo, hi = db_range(case.reference[r, c][case.valid[r, c]])
    lo, hi = lo - 3.0, hi + 1.0
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        write_png(path, [im for _, im in crops], lo, hi)
        return [label for label, _ in crops]
    ph, pw = crops[0][1].shape
    cols, gap, label_h = 4, 6, 14
    rows = (len(crops) + cols - 1) // cols
    canvas = Image.new("L", (cols * pw + (cols - 1) * gap, rows * (ph + label_h + gap)), 255)
    draw = ImageDraw.Draw(canvas)
    for i, (label, im) in enumerate(crops):
        x, y = (i % cols) * (pw + gap), (i // cols) * (ph + label_h + gap)
        short = label.replace("deSpeckNet ", "").replace(" (deepdespeckling)", "").replace("homomorphic, ", "")
        draw.text((x + 2, y + 1), short[:30], fill=0)
        canvas.paste(Image.fromarray(db_to_byte(im, lo, hi)), (x, y + label_h))
    canvas.save(path)
    return [label for label, _ in crops]


def summary_table(groups, methods, key, higher_better=True):
    """Rows = methods, columns = regimes: the mean of `key` over each regime's scenes; best peer in bold."""
    cols = list(groups)
    lines = ["| method | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    means = {}
    for g, cases in groups.items():
        for m in methods:
            vals = [c.metrics[m][key] for c in cases if m in c.metrics]
            means[(g, m)] = float(np.mean(vals)) if len(vals) == len(cases) and vals else None
    best_peer = {}
    for g in cols:
        peers = [(means[(g, m)], m) for m in PEERS if means.get((g, m)) is not None]
        if peers:
            best_peer[g] = (max if higher_better else min)(peers)
    spec = "{:.2f}" if key == "psnr" else "{:.3f}"
    for m in methods:
        cells = []
        for g in cols:
            v = means.get((g, m))
            s = fmt(key, v, spec)
            if g in best_peer and best_peer[g][1] == m:
                s = f"**{s}**"
            cells.append(s)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for m in [BUNDLED, BF16, ENSEMBLE, PHASE2] + [x for x in methods if x.startswith("candidate")]:
        if any(means.get((g, m)) is not None for g in cols):
            cells = []
            for g in cols:
                v = means.get((g, m))
                cells.append(fmt(key, v - best_peer[g][0], "{:+.2f}" if key == "psnr" else "{:+.3f}")
                             if v is not None and g in best_peer else "—")
            lines.append(f"| *{m} − best peer* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def precision_table(groups):
    """Per regime: what the bf16 path changes against fp32 (issue 12 allows 0.05 dB and 0.005 of mean X̂/X)."""
    cols = list(groups)
    lines = ["| change | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for key, label, spec in (("psnr", "PSNR dB", "{:+.3f}"), ("ssim", "SSIM", "{:+.4f}"),
                             ("bias", "mean X̂/X", "{:+.4f}")):
        cells = []
        for g, cases in groups.items():
            diffs = [c.metrics[BF16][key] - c.metrics[BUNDLED][key] for c in cases
                     if BF16 in c.metrics and BUNDLED in c.metrics]
            cells.append(spec.format(float(np.mean(diffs))) if diffs else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 regimes at 256x256 and 2 real dates (development)")
    ap.add_argument("--no-finetune", action="store_true", help="skip phase 2 (the slowest method)")
    ap.add_argument("--candidate", action="append", default=[], metavar="[LABEL=]PATH",
                    help="another deSpeckNet ONNX model to score beside the bundled one (repeatable)")
    ap.add_argument("--real-dir", default=REAL_DIR)
    ap.add_argument("--real-sites", default=",".join(REAL_SITES),
                    help="comma-separated sites of --real-dir, each as SITE_1.npy .. SITE_5.npy (single-look "
                         "amplitudes); sites other than the training ones are scored on every row")
    ap.add_argument("--trained-sites", default=",".join(REAL_SITES),
                    help="sites whose rows 0-127 trained a model scored here (make_model.py --real-sites): "
                         "scored from row 128 on, as the development sites are")
    ap.add_argument("--no-simulated", action="store_true", help="the real dates only")
    ap.add_argument("--peers-python", default=PEERS_PYTHON)
    ap.add_argument("--no-peers", action="store_true", help="plugin methods only")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    started = time.perf_counter()
    out = os.path.abspath(args.out)
    work = os.path.join(out, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    candidates = []
    for spec in args.candidate:
        label, _, path = spec.rpartition("=")
        path = os.path.abspath(path)
        if not os.path.isfile(path):
            sys.exit(f"--candidate {path}: no such file")
        candidates.append((f"candidate: {label or os.path.basename(path)}", path))

    cases = [] if args.no_simulated else simulated_cases(args.quick)
    trained_sites = tuple(s for s in args.trained_sites.split(",") if s)
    real_note = ""
    log_bias = None
    sites = tuple(s for s in args.real_sites.split(",") if s)
    if real_data_available(args.real_dir, sites):
        real, log_bias = real_cases(args.real_dir, args.quick, sites, trained_sites)
        cases += real
    else:
        real_note = (f"Real data: skipped, {args.real_dir} ({', '.join(f'{s}_1..5.npy' for s in sites)}) not found. "
                     "Only simulated scenes were scored.")
        log(real_note)

    # inputs, metric rasters and the peers' noise parameters, estimated from each image
    for case in cases:
        d = os.path.join(work, case.name)
        os.makedirs(d)
        case.files["input"] = plugin_input(case, os.path.join(d, "input.tif"))
        case.files["m_noisy"] = write_metric_raster(os.path.join(d, "m_noisy.tif"), case.noisy, case.valid)
        case.files["m_ref"] = write_metric_raster(os.path.join(d, "m_ref.tif"), case.reference, case.valid)
        case.files["m_ref_db"] = (case.files["m_ref"] if case.db_gain == 1.0 else write_metric_raster(
            os.path.join(d, "m_ref_db.tif"), case.reference * case.db_gain, case.valid))
        y = filled(case)
        looks, sigma, psd, rho_x, rho_y = estimate_log_speckle(y, case.valid)
        np.save(os.path.join(d, "peer_input.npy"), y)
        np.save(os.path.join(d, "psd.npy"), psd)
        case.files.update(peer_npy=os.path.join(d, "peer_input.npy"), psd=os.path.join(d, "psd.npy"), looks=looks,
                          sigma_log=sigma)
        case.notes.append(f"estimated from the image for the peers: L {looks:.2f}, std of ln Y {sigma:.3f}, "
                          f"log-speckle correlation at lag 1: {rho_x:.2f} (columns), {rho_y:.2f} (rows)")

    # Phase 2 (the slowest) and the Python peers run in background processes while this one runs OTB,
    # the plugin's models and the metrics.
    jobs, pool = {}, None
    if not args.no_finetune:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        log(f"phase 2: {len(cases)} scenes, two worker processes in the background")
        pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
        jobs = {case.name: pool.submit(phase2_job, case.files["input"], case.domain, case.looks <= 1.0,
                                       os.path.join(work, case.name)) for case in cases}
    unavailable, peers = {}, None
    if args.no_peers:
        unavailable = {label: "--no-peers" for label in PEERS}
    else:
        log(f"peers: BM3D and SAR2SAR on {len(cases)} scenes, in the background ({args.peers_python})")
        peers = start_python_peers(cases, work, args.peers_python)
        for case in cases:
            log(f"peers: OTB on {case.name}")
            for label, reason in run_otb(case, os.path.join(work, case.name), case.files["looks"]).items():
                if shutil.which("otbcli_Despeckle") is None:
                    unavailable[label] = reason
                else:
                    case.notes.append(f"{label} failed: {reason}")
    from despecknet_qgis.core.bf16 import unavailable_reason

    bf16_reason = unavailable_reason()
    bf16_ok = bf16_reason is None
    if not bf16_ok:
        unavailable[BF16] = bf16_reason
    for case in cases:
        d = os.path.join(work, case.name)
        log(f"plugin: {case.name}")
        case.results[BUNDLED], case.seconds[BUNDLED] = run_plugin(case, None, "bundled", d)
        if bf16_ok:
            case.results[BF16], case.seconds[BF16] = run_plugin(case, None, "bundled bf16", d, "bf16")
        case.results[ENSEMBLE], case.seconds[ENSEMBLE] = run_plugin(case, None, "bundled ensemble", d,
                                                                    self_ensemble=True)
        for label, path in candidates:
            case.results[label], case.seconds[label] = run_plugin(case, path, label, d)
    if not args.no_peers:
        log("peers: waiting for BM3D and SAR2SAR")
        unavailable.update(finish_python_peers(peers, cases, work, args.peers_python))

    ran = [BUNDLED] + ([BF16] if bf16_ok else []) + [ENSEMBLE] + [label for label, _ in candidates] + ([] if args.no_finetune else [PHASE2]) + PEERS
    for case in cases:
        log(f"metrics: {case.name}")
        d = os.path.join(work, case.name)
        case.metrics[NOISY] = score(case, NOISY, case.noisy, d)
        case.metrics[REFERENCE] = score(case, REFERENCE, case.reference, d)
        for m in ran:
            if m in case.results:
                case.metrics[m] = score(case, m, case.results[m], d)
    for case in cases:
        if case.name not in jobs:
            continue
        try:
            path, seconds, note = jobs[case.name].result()
            case.results[PHASE2], case.seconds[PHASE2] = read_plugin_output(case, path), seconds
            case.notes.append(note)
            case.metrics[PHASE2] = score(case, PHASE2, case.results[PHASE2], os.path.join(work, case.name))
            log(f"phase 2: {case.name} done ({seconds:.0f} s)")
        except Exception as exc:  # noqa: BLE001 - reported in the table, the benchmark goes on
            case.notes.append(f"phase 2 failed: {type(exc).__name__}: {str(exc)[:300]}")
    if pool is not None:
        pool.shutdown()

    # --- report ---
    text = ["# Quality benchmark (tools/bench_quality.py)", ""]
    text.append(f"{'Quick run' if args.quick else 'Full run'}; bundled model `models/despecknet.onnx`"
                + "".join(f"; {label} `{path}`" for label, path in candidates)
                + f". Total {time.perf_counter() - started:.0f} s wall (the s column: seconds per method, "
                  "on shared cores, indicative only).")
    text.append("")
    text.append("PSNR and SSIM on dB values against the reference; mean X̂/X over valid pixels; ENL on homogeneous "
                "areas (higher = smoother; the reference row shows the truth's); MoR, VoR of Y/X̂ over the whole "
                "image; EPI (Sobel, linear); C_NN: mean over point targets (reference row: the reference's); "
                "δh: ratio-image structure (Gomez et al. 2017; 0 = no structure, the reference row gives the "
                "value of a perfect filter, above 0 where speckle is correlated); M = r_ENL,μ + δh (lower is "
                "better). Best peer in bold in the summaries.")
    text.append("")
    otb = shutil.which("otbcli_Despeckle")
    otb_version = ""
    if otb:
        p = subprocess.run([otb, "-help"], capture_output=True, text=True)
        otb_version = next((w.rstrip(".") for line in (p.stdout + p.stderr).splitlines() if "version" in line
                            for w in line.split()[-1:]), "")
    v = PEER_VERSIONS
    text += ["Peers and their settings (noise parameters estimated from each image, never the simulation's truth; "
             "nodata filled with the nearest valid value since none of them handles it):",
             f"- OTB {otb_version} `otbcli_Despeckle` (Debian otb-bin): Lee, Frost (deramp 0.1), Gamma-MAP, Kuan, "
             f"radius {OTB_RADIUS} ({2 * OTB_RADIUS + 1}×{2 * OTB_RADIUS + 1}), nblooks = the estimated looks;",
             f"- BM3D {v.get('bm3d', '?')} (PyPI bm3d, profile 'np') on ln I: white noise with σ = std of ln I "
             "on the image's 12 flattest 24×24 windows; or coloured noise with the log-speckle spectrum "
             "measured on the same windows (autocorrelation up to lag ±5, Bartlett taper); exp(ẑ − (ψ(L̂) − ln L̂)) "
             "with L̂ from trigamma(L̂) = σ²;",
             f"- SAR2SAR from deepdespeckling {v.get('deepdespeckling', '?')} (torch {v.get('torch', '?')}, CPU) on "
             "amplitudes gained so that the median sits at 45 % of its training log range, clipped to that range.",
             ""]
    if unavailable:
        text.append("Unavailable peers: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
        text.append("")
    if real_note:
        text += [real_note, ""]
    elif log_bias is not None:
        text += [f"Real references: the mean of the other {REAL_DATES - 1} dates (intensity); for dB metrics its "
                 f"log bias ψ(K) − ln K = {log_bias:.4f} ({10 * log_bias / math.log(10):.3f} dB) for K = "
                 f"{REAL_DATES - 1} looks is removed (reference × {math.exp(-log_bias):.4f}). No EPI on real dates: "
                 "the reference's own speckle inflates its gradient sum, so EPI would rank noisier outputs higher "
                 "(a perfect estimate scores 0.16 against a 4-date mean, the unfiltered date 0.23).", ""]

    groups = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    summary_methods = [NOISY] + ran
    text += ["## Summary: PSNR on dB values (mean over each regime's scenes)", "",
             summary_table(groups, summary_methods, "psnr"), "",
             "## Summary: SSIM on dB values", "", summary_table(groups, summary_methods, "ssim"), ""]
    if bf16_ok:
        text += ["## The fast CPU path: bf16 minus fp32 (same model, same scenes)", "",
                 precision_table(groups), ""]

    for case in [c for c in cases if not c.real]:
        rows = [(m, case.metrics.get(m)) for m in [NOISY, REFERENCE] + ran]
        png = os.path.join(out, f"{case.name}.png")
        order = quicklook(case, ran, png)
        text += [f"## {case.title}", "", f"`{case.name}`, {case.noisy.shape[0]}×{case.noisy.shape[1]}, "
                 f"{int(case.valid.sum())} valid pixels, {len(case.areas)} homogeneous parcels, {len(case.points)} "
                 "point targets.", "", method_table(rows, unavailable, case.seconds), ""]
        text += [f"- {n}" for n in case.notes]
        text += [f"- quick-look `{os.path.relpath(png, ROOT)}` (crop rows {case.crop[0].start}:{case.crop[0].stop}, "
                 f"columns {case.crop[1].start}:{case.crop[1].stop}; panels: {', '.join(order)})", ""]

    for site in sites:
        site_cases = [c for c in cases if c.real and c.group == f"real {site}"]
        if not site_cases:
            continue
        avg = []
        for m in [NOISY, REFERENCE] + ran:
            ms = [c.metrics.get(m) for c in site_cases]
            if any(x is None for x in ms):
                avg.append((m, None))
                continue
            avg.append((m, {k: float(np.mean([x[k] for x in ms])) for k in ms[0]}))
        secs = {m: float(np.mean([c.seconds[m] for c in site_cases])) for m in ran
                if all(m in c.seconds for c in site_cases)}
        first_row, rows = first_scored_row(site, trained_sites), site_cases[0].noisy.shape[0]
        held_out = (f"only (a model may be trained on rows 0 to {TRAIN_ROWS - 1})" if first_row
                    else "(a site that training never saw)")
        text += [f"## Real Sentinel-1 single-look, {site}: mean over {len(site_cases)} dates", "",
                 f"Each date ({rows}×{site_cases[0].noisy.shape[1]}, despeckled whole) against the mean of the other "
                 f"dates, scored on rows {first_row} to {rows - 1} {held_out}; ENL on the reference's "
                 f"{len(site_cases[0].areas)} most homogeneous 16×16 windows; C_NN at the reference's brightest "
                 "isolated maxima.", "", method_table(avg, unavailable, secs), ""]
        lines = ["| method | " + " | ".join(f"date {c.name.rsplit('_', 1)[1]}" for c in site_cases) + " |",
                 "|" + "---|" * (len(site_cases) + 1)]
        for m in [NOISY] + ran:
            lines.append(f"| {m} | " + " | ".join(
                f"{c.metrics[m]['psnr']:.2f} / {c.metrics[m]['ssim']:.3f}" if m in c.metrics else "—"
                for c in site_cases) + " |")
        text += ["PSNR dB / SSIM per date:", "", "\n".join(lines), ""]
        split_ref = float(np.mean([c.cnn_split_ref for c in site_cases]))
        text += ["Point targets without selection bias: C_NN dB at the brightest isolated maxima of the mean of two "
                 "of the other dates, against the mean of the last two dates at the same pixels (every split of the "
                 f"other four dates, averaged): reference {split_ref:.2f}; "
                 + "; ".join(f"{m} {np.mean([c.metrics[m]['cnn_split'] for c in site_cases]):.2f}" for m in
                             [NOISY] + ran if all(m in c.metrics for c in site_cases)) + ".", ""]
        for c in site_cases:
            png = os.path.join(out, f"{c.name}.png")
            order = quicklook(c, ran, png)
            text += [f"- {c.name}: " + "; ".join(c.notes) + f"; quick-look `{os.path.relpath(png, ROOT)}`"]
        crop = site_cases[0].crop
        text += [f"- quick-look panels (rows {crop[0].start}-{crop[0].stop - 1}, columns {crop[1].start}-"
                 f"{crop[1].stop - 1}): {', '.join(order)}", ""]

    report = "\n".join(text)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report + "\n")
    print(report)
    log(f"report: {os.path.join(out, 'report.md')} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
