"""SAR-like reflectivity scenes and speckle, for training, the sample scene and tests.

A scene is a reflectivity map X in linear intensity (sigma0-like, about 1e-3 to 10):
agricultural parcels with sharp borders, textured forest, smooth dark water, roads,
an urban block, and bright point scatterers 15 to 35 dB above their surroundings.
Speckle N has mean 1 and L looks (Gamma law), optionally spatially correlated as in
over-sampled SLC products; the observed intensity is Y = X * N.

`realistic=True` scenes (training and the quality benchmark) add what flat parcels
lack and what real images show: texture inside fields (fine grain and crop rows),
gradual variations across parcels, and point scatterers that are deterministic, not
speckled: a pylon or a building corner returns the same strong echo in every look,
spread by the sensor's impulse response (`observe`). A network trained on speckled
points learns to shrink every bright pixel, and one trained on flat parcels learns
to paint.
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
    reflectivity: np.ndarray  # X, linear intensity (distributed clutter; with the points unless realistic)
    parcels: np.ndarray  # int label of the parcel of each pixel
    homogeneous: np.ndarray  # bool: untextured parcels (fields, water), no scatterer
    # Deterministic point scatterers (intensity, 0 elsewhere): realistic scenes only.
    targets: np.ndarray | None = None

    def reference(self, correlation: float = 0.0) -> np.ndarray:
        """E[Y]: the clutter plus the points spread by the impulse response (see observe)."""
        if self.targets is None:
            return self.reflectivity
        return self.reflectivity + spread_targets(self.targets, correlation)


def _field_texture(shape, rng) -> np.ndarray:
    """dB texture of crop fields: fine correlated grain, sometimes oriented rows."""
    h, w = shape
    grain = _smooth_field(shape, rng.uniform(0.6, 3.0), rng) * rng.uniform(0.2, 1.6)
    if rng.uniform() < 0.35:
        yy, xx = np.mgrid[0:h, 0:w]
        angle, period = rng.uniform(0, np.pi), rng.uniform(4.0, 12.0)
        rows = np.sin(2 * np.pi * (yy * np.cos(angle) + xx * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
        grain = grain + rng.uniform(0.5, 2.0) * rows
    return grain


def simulate_reflectivity(shape=(256, 256), rng=None, parcel_size=48.0, realistic=False, texture_floor_db=0.0) -> Scene:
    """A reflectivity scene: parcels (fields, forest, water), roads, an urban block, point scatterers.

    realistic: textured fields, slow variations across parcels, deterministic point targets.
    texture_floor_db (realistic only): more fine grain, of up to this std (dB), on 90 % of the
    field and water parcels. On the two real Sentinel-1 sites of ../shared/data, the
    log variance of 16x16 blocks of the 5-date mean exceeds that of a realistic simulation by
    about 0.1 (ln units squared) at the 10th to 50th percentiles: real fields are rarely flat.
    0 (the default) leaves the generator, and the benchmark's scenes, as they were.
    """
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

    if realistic:
        # Each field its own texture; slow variations that cross parcel borders (+-3 dB).
        textured = np.zeros(n_seeds, bool)
        for k in np.flatnonzero(kind == "field"):
            if rng.uniform() < 0.7:
                inside = parcels == k
                x_db[inside] += _field_texture(shape, rng)[inside]
                textured[k] = True
        x_db = x_db + rng.uniform(0.5, 1.5) * _smooth_field(shape, rng.uniform(25, 60), rng)
        if texture_floor_db > 0:
            for k in np.flatnonzero(kind != "forest"):
                if rng.uniform() < 0.9:
                    inside = parcels == k
                    grain = _smooth_field(shape, rng.uniform(0.6, 2.0), rng)
                    x_db[inside] += rng.uniform(0.5, 1.0) * texture_floor_db * grain[inside]
                    textured[k] = True
    x = undb(x_db)
    homogeneous = (kind[parcels] != "forest")
    if realistic:
        homogeneous &= ~textured[parcels]
    targets = np.zeros(shape) if realistic else None

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
        if realistic:
            targets[py, px] = undb(rng.uniform(8.0, 25.0, n_pts))
        else:
            x[py, px] = undb(rng.uniform(8.0, 22.0, n_pts))

    # Isolated point scatterers (pylons, farm buildings): +15 to +35 dB over their field
    # (+15 to +40 dB, and more of them, in realistic scenes).
    n_iso = max(1, int(h * w / (3000 if realistic else 8000)))
    py, px = rng.integers(1, h - 1, n_iso), rng.integers(1, w - 1, n_iso)
    if realistic:
        targets[py, px] = x[py, px] * undb(rng.uniform(15.0, 40.0, n_iso))
    else:
        x[py, px] = x[py, px] * undb(rng.uniform(15.0, 35.0, n_iso))
    iso = np.zeros(shape, bool)
    iso[py, px] = True
    homogeneous &= ~ndimage.binary_dilation(iso, iterations=4)
    return Scene(x, parcels, homogeneous, targets)


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


def impulse_power(correlation: float) -> np.ndarray | None:
    """|h|^2 of the Gaussian impulse response used by simulate_speckle, summing to 1 (None: a delta)."""
    if correlation <= 0:
        return None
    r = int(np.ceil(3 * correlation))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    power = np.exp(-(yy**2 + xx**2) / (2 * correlation**2)) ** 2
    return power / power.sum()


def spread_targets(targets: np.ndarray, correlation: float) -> np.ndarray:
    """Mean intensity of deterministic points seen through the impulse response (energy kept)."""
    power = impulse_power(correlation)
    return targets if power is None else ndimage.convolve(targets, power, mode="constant")


def observe(clutter, targets, looks=1.0, correlation=0.0, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Observed intensity Y and its expectation E[Y] for clutter plus deterministic points.

    The clutter is speckled (simulate_speckle); each point adds a constant echo T spread
    by the impulse response, summed coherently with the clutter at a random phase:
    Y = C N + T + 2 sqrt(C N T) cos(phi) / sqrt(L) (Rician for one look), E[Y] = C + T.
    """
    rng = np.random.default_rng(rng)
    y = clutter * simulate_speckle(clutter.shape, looks, correlation, rng)
    if targets is None or not targets.any():
        return y, clutter
    t = spread_targets(targets, correlation)
    cross = 2.0 * np.sqrt(y * t) * np.cos(rng.uniform(0, 2 * np.pi, clutter.shape)) / np.sqrt(max(looks, 1.0))
    return y + t + cross, clutter + t


def sample_regime(rng) -> tuple[float, float]:
    """A random speckle regime for training: (looks, correlation)."""
    looks = float(rng.choice([1.0, 1.0, 2.0, 3.0, 4.4, 6.0, 10.0]))
    correlation = float(rng.choice([0.0, 0.0, 0.5, 0.7, 0.9]))
    return looks, correlation


def patch_cutter(rng: np.random.Generator, shape: tuple, p: int):
    """A function that cuts the same random p x p patch, rotated and flipped at random, from arrays of `shape`."""
    y0, x0 = rng.integers(0, shape[0] - p + 1), rng.integers(0, shape[1] - p + 1)
    turn, flip = int(rng.integers(4)), rng.uniform() < 0.5

    def cut(a):
        a = np.rot90(a[y0 : y0 + p, x0 : x0 + p], turn)
        return a[:, ::-1] if flip else a

    return cut


class SimulatedPatches:
    """Endless supervised batches (noisy, clean, mask) in the network's normalised log domain.

    Patches are cut from a pool of simulated scenes, flipped and rotated, and speckled
    afresh for each batch with a random regime. The offset is the scene's mean log
    reflectivity plus E[ln N], jittered, as despeckle would compute it on a whole image.
    Some patches get a rectangle of nodata (set to 0, masked out of the loss), as at the
    borders of real acquisitions.
    """

    def __init__(self, n_scenes=48, scene_size=256, patch=40, seed=0, regimes=None, nodata_fraction=0.1,
                 realistic=False, texture_floor_db=0.0):
        from . import domain as dm

        self.dm = dm
        self.rng = np.random.default_rng(seed)
        self.scenes = [simulate_reflectivity((scene_size, scene_size), self.rng, realistic=realistic,
                                             texture_floor_db=texture_floor_db)
                       for _ in range(n_scenes)]
        self.log_means = [float(np.log(s.reference()).mean()) for s in self.scenes]
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
            scene = self.scenes[k]
            x = scene.reflectivity
            cut = patch_cutter(rng, x.shape, p)
            looks, corr = self.regimes[int(rng.integers(len(self.regimes)))] if self.regimes else sample_regime(rng)
            if scene.targets is None:
                xp = cut(x)
                yp = xp * simulate_speckle((p, p), looks, corr, rng)
            else:
                yp, xp = observe(cut(x), cut(scene.targets), looks, corr, rng)
            offset = self.log_means[k] + self.dm.log_speckle_mean(looks) + rng.normal(0.0, 0.3)
            noisy[i, 0] = self.dm.normalise(yp, offset)
            clean[i, 0] = self.dm.normalise(xp, offset)
            if rng.uniform() < self.nodata_fraction:
                a, b = sorted(rng.integers(0, p, 2))
                c, d = sorted(rng.integers(0, p, 2))
                noisy[i, 0, a : b + 1, c : d + 1] = 0.0
                mask[i, 0, a : b + 1, c : d + 1] = 0.0
        return noisy, clean, mask
