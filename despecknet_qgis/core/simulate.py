"""SAR-like reflectivity scenes and speckle, for training, the sample scene and tests.

A scene is a reflectivity map X in linear intensity (sigma0-like, about 1e-3 to 10):
agricultural parcels with sharp borders, textured forest, smooth dark water, roads,
an urban block, and bright point scatterers 15 to 35 dB above their surroundings.
Speckle N has mean 1 and L looks (Gamma law), optionally spatially correlated as in
over-sampled SLC products; the observed intensity is Y = X * N.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def db(x):
    return 10.0 * np.log10(x)


def undb(x):
    return np.power(10.0, np.asarray(x, dtype=np.float64) / 10.0)


def _smooth_field(shape, sigma, rng):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / (f.std() + 1e-12)


@dataclass
class Scene:
    reflectivity: np.ndarray  # X, linear intensity
    parcels: np.ndarray  # int label of the parcel of each pixel
    homogeneous: np.ndarray  # bool: untextured parcels (fields, water), no scatterer


def simulate_reflectivity(shape=(256, 256), rng=None, parcel_size=48.0) -> Scene:
    rng = np.random.default_rng(rng)
    h, w = shape
    n_seeds = max(4, int(h * w / parcel_size**2))
    seeds = rng.uniform(0, 1, (n_seeds, 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    # Slightly warped coordinates give irregular, not perfectly straight, parcel borders.
    warp = 3.0 * _smooth_field((2, h, w), (0, 12, 12), rng)
    grid = np.stack([yy + warp[0], xx + warp[1]], axis=-1).reshape(-1, 2)
    parcels = cKDTree(seeds).query(grid)[1].reshape(h, w)

    kind = rng.choice(["field", "forest", "water"], size=n_seeds, p=[0.68, 0.22, 0.10])
    level_db = np.where(
        kind == "field",
        rng.uniform(-17.0, -5.0, n_seeds),
        np.where(kind == "forest", rng.uniform(-9.5, -6.5, n_seeds), rng.uniform(-26.0, -20.0, n_seeds)),
    )
    x_db = level_db[parcels]
    # Gentle within-field trends (moisture, slope): up to about +-0.7 dB.
    x_db = x_db + 0.35 * _smooth_field(shape, 20, rng)
    forest = kind[parcels] == "forest"
    if forest.any():
        # Canopy texture: correlated Gamma texture (K-distributed clutter once speckled).
        nu = rng.uniform(4.0, 12.0)
        tex = rng.gamma(nu, 1.0 / nu, shape)
        tex = ndimage.gaussian_filter(tex, rng.uniform(0.8, 2.0))
        tex /= tex.mean()
        x_db = np.where(forest, x_db + db(np.maximum(tex, 1e-3)) * 2.5, x_db)

    x = undb(x_db)
    homogeneous = (kind[parcels] != "forest")

    # Roads: straight segments, 1 to 3 pixels wide, dark asphalt or bright kerbs.
    for _ in range(rng.integers(1, 4)):
        p0 = rng.uniform(0, 1, 2) * (h, w)
        angle = rng.uniform(0, np.pi)
        width = rng.uniform(0.6, 1.6)
        dist = np.abs((yy - p0[0]) * np.cos(angle) - (xx - p0[1]) * np.sin(angle))
        road = dist < width
        x[road] = undb(rng.choice([-21.0, -2.0]))
        homogeneous &= dist > width + 3

    # Urban block: strong, heterogeneous returns with many bright scatterers.
    if rng.uniform() < 0.6:
        bh, bw = rng.integers(h // 8, h // 4 + 1), rng.integers(w // 8, w // 4 + 1)
        y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
        block = np.zeros(shape, bool)
        block[y0 : y0 + bh, x0 : x0 + bw] = True
        x[block] = undb(-4.0 + 3.0 * _smooth_field(shape, 1.0, rng)[block])
        homogeneous &= ~ndimage.binary_dilation(block, iterations=4)
        n_pts = int(bh * bw / 60)
        py, px = rng.integers(y0, y0 + bh, n_pts), rng.integers(x0, x0 + bw, n_pts)
        x[py, px] = undb(rng.uniform(8.0, 22.0, n_pts))

    # Isolated point scatterers (pylons, farm buildings): +15 to +35 dB over their field.
    n_iso = max(1, int(h * w / 8000))
    py, px = rng.integers(1, h - 1, n_iso), rng.integers(1, w - 1, n_iso)
    x[py, px] = x[py, px] * undb(rng.uniform(15.0, 35.0, n_iso))
    iso = np.zeros(shape, bool)
    iso[py, px] = True
    homogeneous &= ~ndimage.binary_dilation(iso, iterations=4)
    return Scene(x, parcels, homogeneous)


def simulate_speckle(shape, looks=1.0, correlation=0.0, rng=None) -> np.ndarray:
    """Multiplicative speckle with mean 1 and variance 1/looks.

    correlation > 0 is the std (pixels) of a Gaussian filter on the complex field, as
    over-sampled SLC products show (0.7 gives a correlation of about 0.6 between
    neighbours); looks are then averaged as independent correlated single looks.
    """
    rng = np.random.default_rng(rng)
    if correlation <= 0:
        return rng.gamma(looks, 1.0 / looks, shape)
    n = max(1, int(round(looks)))
    # Energy of the filter so each look's intensity keeps mean 1.
    delta = np.zeros((9 * 2 + 1,) * 2)
    delta[9, 9] = 1.0
    energy = float((ndimage.gaussian_filter(delta, correlation, mode="constant") ** 2).sum())
    out = np.zeros(shape)
    for _ in range(n):
        field = rng.standard_normal((2,) + tuple(shape)) / np.sqrt(2.0)
        field = ndimage.gaussian_filter(field, (0, correlation, correlation), mode="wrap")
        out += (field[0] ** 2 + field[1] ** 2) / energy
    return out / n


def sample_regime(rng) -> tuple[float, float]:
    """A random speckle regime for training: (looks, correlation)."""
    looks = float(rng.choice([1.0, 1.0, 2.0, 3.0, 4.4, 6.0, 10.0]))
    correlation = float(rng.choice([0.0, 0.0, 0.5, 0.7, 0.9]))
    return looks, correlation


class SimulatedPatches:
    """Endless supervised batches (noisy, clean, mask) in the network's normalised log domain.

    Patches are cut from a pool of simulated scenes, flipped and rotated, and speckled
    afresh for each batch with a random regime. The offset is the scene's mean log
    reflectivity plus E[ln N], jittered, as despeckle would compute it on a whole image.
    Some patches get a rectangle of nodata (set to 0, masked out of the loss), as at the
    borders of real acquisitions.
    """

    def __init__(self, n_scenes=48, scene_size=256, patch=40, seed=0, regimes=None, nodata_fraction=0.1):
        from . import domain as dm

        self.dm = dm
        self.rng = np.random.default_rng(seed)
        self.scenes = [simulate_reflectivity((scene_size, scene_size), self.rng) for _ in range(n_scenes)]
        self.log_means = [float(np.log(s.reflectivity).mean()) for s in self.scenes]
        self.patch = patch
        self.regimes = regimes
        self.nodata_fraction = nodata_fraction

    def batch(self, size: int):
        p, rng = self.patch, self.rng
        noisy = np.empty((size, 1, p, p), np.float32)
        clean = np.empty_like(noisy)
        mask = np.ones_like(noisy)
        for i in range(size):
            k = int(rng.integers(len(self.scenes)))
            x = self.scenes[k].reflectivity
            y0, x0 = rng.integers(0, x.shape[0] - p + 1), rng.integers(0, x.shape[1] - p + 1)
            xp = np.rot90(x[y0 : y0 + p, x0 : x0 + p], int(rng.integers(4)))
            if rng.uniform() < 0.5:
                xp = xp[:, ::-1]
            looks, corr = self.regimes[int(rng.integers(len(self.regimes)))] if self.regimes else sample_regime(rng)
            yp = xp * simulate_speckle((p, p), looks, corr, rng)
            offset = self.log_means[k] + self.dm.log_speckle_mean(looks) + rng.normal(0.0, 0.3)
            noisy[i, 0] = self.dm.normalise(yp, offset)
            clean[i, 0] = self.dm.normalise(xp, offset)
            if rng.uniform() < self.nodata_fraction:
                a, b = sorted(rng.integers(0, p, 2))
                c, d = sorted(rng.integers(0, p, 2))
                noisy[i, 0, a : b + 1, c : d + 1] = 0.0
                mask[i, 0, a : b + 1, c : d + 1] = 0.0
        return noisy, clean, mask
