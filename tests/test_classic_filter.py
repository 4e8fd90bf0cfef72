"""despecknet:classicfilter: seven classic speckle filters, streamed, through the real algorithm on real GeoTIFFs."""
import math

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback
from scipy import ndimage

from conftest import read_tif, run_qgis_process, write_tif
from despecknet_qgis.core import classic_filters as cf
from despecknet_qgis.core.errors import Cancelled, InputError
from despecknet_qgis.core.metrics import enl
from despecknet_qgis.core.progress import Progress

LOOKS = 4.0


def run(params, feedback=None):
    import processing

    return processing.run("despecknet:classicfilter", params, feedback=feedback or QgsProcessingFeedback())


def scene(size=120, seed=0, looks=LOOKS):
    """Two homogeneous fields (1 and 5), a bright square, L-look Gamma speckle."""
    rng = np.random.default_rng(seed)
    x = np.ones((size, size))
    x[:, size // 2:] = 5.0
    x[20:30, 80:90] = 40.0
    return x * rng.gamma(looks, 1.0 / looks, x.shape), x


@pytest.fixture(scope="module")
def speckled(tmp_path_factory):
    y, x = scene()
    y[:5, :] = -1.0  # nodata rows
    y[60:63, 10:13] = -1.0  # a nodata hole inside a field
    path = write_tif(tmp_path_factory.mktemp("cf") / "y.tif", y.astype(np.float32), nodata=-1.0, epsg=32633)
    return path, y, x


@pytest.mark.parametrize("method", cf.METHODS)
def test_each_filter_through_the_algorithm_raises_enl_keeps_nodata_georeferencing_and_mean(provider, speckled, tmp_path,
                                                                                           method):
    path, y, x = speckled
    out = tmp_path / f"{method}.tif"
    result = run({"INPUT": path, "METHOD": cf.METHODS.index(method), "LOOKS": LOOKS, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    (f,), ds = read_tif(out)
    src = gdal.Open(path)
    assert ds.GetGeoTransform() == src.GetGeoTransform()
    assert ds.GetSpatialRef().IsSame(src.GetSpatialRef())
    assert ds.GetRasterBand(1).GetNoDataValue() == -1.0
    invalid = y == -1.0
    assert (f[invalid] == -1.0).all()
    assert np.isfinite(f[~invalid]).all() and (f[~invalid] > 0).all()
    field = (slice(30, 110), slice(15, 50))  # left field, away from the edge, the hole outside it
    assert not invalid[field].any()
    before, after = enl(y[field]), enl(f[field])
    assert before == pytest.approx(LOOKS, rel=0.15)
    assert after > 3 * before, (method, before, after)
    assert f[field].mean() == pytest.approx(1.0, rel=0.05)  # radiometry kept


def test_tiled_equals_whole_image_for_every_filter(tmp_path):
    y, _ = scene(150, seed=1)
    y[70:73, 40:44] = np.nan
    path = write_tif(tmp_path / "y.tif", y.astype(np.float32), nodata=float("nan"))
    for method in cf.METHODS:
        whole, tiled = tmp_path / f"{method}_whole.tif", tmp_path / f"{method}_tiled.tif"
        cf.classic_filter_raster(path, str(whole), method, looks=LOOKS, tile_size=4096)
        report = cf.classic_filter_raster(path, str(tiled), method, looks=LOOKS, tile_size=32)
        assert report.tiles == 25
        a, b = read_tif(whole)[0][0], read_tif(tiled)[0][0]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=2e-6, equal_nan=True, err_msg=method)


def test_boxcar_equals_a_uniform_filter_and_every_filter_returns_a_constant_image():
    y, _ = scene(64, seed=2)
    valid = np.ones(y.shape, bool)
    np.testing.assert_allclose(cf.filter_intensity(y, valid, "boxcar", window_size=5),
                               ndimage.uniform_filter(y, 5, mode="reflect"), rtol=1e-10)
    constant = np.full((40, 40), 3.5)
    for method in cf.METHODS:
        np.testing.assert_allclose(cf.filter_intensity(constant, valid[:40, :40], method, looks=LOOKS), 3.5, rtol=1e-12,
                                   err_msg=method)


def test_known_properties_of_lee_gamma_map_frost_refined_lee_and_lee_sigma():
    rng = np.random.default_rng(3)
    y, _ = scene(80, seed=3)
    valid = np.ones(y.shape, bool)
    mean = ndimage.uniform_filter(y, 7, mode="reflect")
    # Lee lies between the local mean and the pixel (a convex combination of both)
    lee = cf.filter_intensity(y, valid, "lee", looks=LOOKS)
    lo, hi = np.minimum(mean, y), np.maximum(mean, y)
    assert ((lee >= lo - 1e-9) & (lee <= hi + 1e-9)).all()
    # Gamma-MAP keeps a pixel far brighter than speckle explains (Ci >= sqrt(2) Cu) as it is
    spike = np.ones((41, 41)) * rng.gamma(LOOKS, 1 / LOOKS, (41, 41))
    spike[20, 20] = 500.0
    g = cf.filter_intensity(spike, np.ones(spike.shape, bool), "gamma_map", looks=LOOKS)
    assert g[20, 20] == 500.0
    # Frost with a huge damping factor on a heterogeneous window keeps the centre pixel; with none it is a boxcar
    f0 = cf.filter_intensity(y, valid, "frost", damping=0.01)
    assert np.abs(f0 - mean).max() < 0.05 * y.max()
    f_big = cf.filter_intensity(spike, np.ones(spike.shape, bool), "frost", damping=100.0)
    assert f_big[20, 20] > 0.99 * 500.0
    # Refined Lee does not blur across a straight edge: the pixel next to it stays on its own side
    step = np.ones((40, 40))
    step[:, 20:] = 10.0
    r = cf.filter_intensity(step * rng.gamma(16, 1 / 16, step.shape), np.ones(step.shape, bool), "refined_lee", looks=16)
    plain = cf.filter_intensity(step * rng.gamma(16, 1 / 16, step.shape), np.ones(step.shape, bool), "lee", looks=16)
    assert np.abs(r[5:35, 19] - 1.0).mean() < 0.5 * np.abs(plain[5:35, 19] - 1.0).mean()
    # Lee sigma's range holds probability sigma of the L-look Gamma law and keeps its mean at 1
    from scipy import integrate, stats

    for looks in (1.0, 4.0):
        a1, a2, eta2 = cf.sigma_range(looks, 0.9)
        law = stats.gamma(looks, scale=1 / looks)
        assert law.cdf(a2) - law.cdf(a1) == pytest.approx(0.9, abs=1e-9)
        inside_mean = integrate.quad(lambda u: u * law.pdf(u), a1, a2)[0] / 0.9
        assert inside_mean == pytest.approx(1.0, abs=1e-7)
        assert 0 < eta2 < 1 / looks  # the truncated law is narrower than the whole one


def test_lee_is_snap_and_otb_s_lee_and_keeps_a_bright_point_whole_where_kuan_halves_it():
    rng = np.random.default_rng(5)
    y = rng.gamma(1.0, 1.0, (41, 41))
    y[20, 20] = 100.0
    valid = np.ones(y.shape, bool)
    # Lee (1980), as SNAP and OTB compute it: w = 1 - Cu² / Ci², clipped to [0, 1]
    m = ndimage.uniform_filter(y, 7, mode="reflect")
    v = ndimage.uniform_filter(y * y, 7, mode="reflect") - m * m
    w = np.clip(1.0 - m * m / (1.0 * v), 0.0, 1.0)
    lee = cf.filter_intensity(y, valid, "lee", looks=1.0)
    np.testing.assert_allclose(lee, m + w * (y - m), rtol=1e-9)
    kuan = cf.filter_intensity(y, valid, "kuan", looks=1.0)
    np.testing.assert_allclose(kuan, m + np.clip(w / 2.0, 0, 1) * (y - m), rtol=1e-9)  # (1 - Cu²/Ci²) / (1 + Cu²)
    assert lee[20, 20] > 0.9 * 100.0  # was 49: Kuan's weight, which tends to L / (L + 1) at a point
    assert kuan[20, 20] < 0.6 * 100.0


def test_local_statistics_of_dark_water_beside_bright_targets_are_exact_and_the_same_in_every_tile(tmp_path):
    """-40 dB water with +40 dB targets: the running sums of uniform_filter kept each target's rounding
    error along its row, wrong by up to 170 % (Gamma-MAP 630 %) and different from tile to tile."""
    rng = np.random.default_rng(6)
    y = 1e-4 * rng.gamma(1.0, 1.0, (160, 160))
    targets = rng.integers(0, 160, (12, 2))
    y[targets[:, 0], targets[:, 1]] = 1e4
    near = ndimage.maximum_filter(y > 1, 9)  # pixels whose 7x7 window or its neighbours hold a target
    valid = np.ones(y.shape, bool)
    exact_m = np.zeros_like(y)
    exact_v = np.zeros_like(y)
    p = np.pad(y, 3, mode="symmetric")
    for r in range(160):
        for c in range(160):
            win = p[r:r + 7, c:c + 7]
            exact_m[r, c], exact_v[r, c] = win.mean(), win.var()
    mean, var = cf._local_mean_var(y, valid, 7)
    far = ~near
    np.testing.assert_allclose(mean[far], exact_m[far], rtol=1e-9)
    np.testing.assert_allclose(var[far], exact_v[far], rtol=1e-6)
    path = write_tif(tmp_path / "water.tif", y.astype(np.float32))
    for method in ("lee", "gamma_map", "frost"):
        whole, tiled = tmp_path / f"{method}_w.tif", tmp_path / f"{method}_t.tif"
        cf.classic_filter_raster(path, str(whole), method, looks=1.0, tile_size=4096)
        cf.classic_filter_raster(path, str(tiled), method, looks=1.0, tile_size=32)
        np.testing.assert_allclose(read_tif(tiled)[0][0], read_tif(whole)[0][0], rtol=1e-5, err_msg=method)


def test_valid_zero_pixels_never_become_nan_or_negative(tmp_path):
    rng = np.random.default_rng(7)
    y = rng.gamma(1.0, 1.0, (64, 64))
    y[20:30, 20:30] = 0.0  # valid zeros: nodata is declared as -1
    y[:2] = -1.0
    path = write_tif(tmp_path / "a.tif", np.sqrt(np.maximum(y, 0)).astype(np.float32) * np.where(y < 0, -1, 1),
                     nodata=-1.0)
    for method in cf.METHODS:
        out = tmp_path / f"{method}.tif"
        cf.classic_filter_raster(path, str(out), method, domain="amplitude", looks=1.0, zero_is_nodata=False)
        f = read_tif(out)[0][0]
        assert np.isfinite(f).all() and (f[2:] >= 0).all(), method


def test_band_metadata_and_unit_of_the_input_are_kept(tmp_path):
    y, _ = scene(48, seed=8)
    path = write_tif(tmp_path / "vv.tif", y.astype(np.float32))
    ds = gdal.Open(path, gdal.GA_Update)
    band = ds.GetRasterBand(1)
    band.SetDescription("VV")
    band.SetMetadata({"POLARISATION": "VV", "SWATH": "IW"})
    band.SetUnitType("linear")
    band = ds = None
    out = tmp_path / "f.tif"
    cf.classic_filter_raster(path, str(out), "lee", looks=LOOKS)
    result = gdal.Open(str(out))
    b = result.GetRasterBand(1)
    assert b.GetDescription() == "VV"
    assert b.GetMetadata() == {"POLARISATION": "VV", "SWATH": "IW"}
    assert b.GetUnitType() == "linear"


def test_decibel_and_amplitude_inputs_give_the_intensity_result_in_their_own_domain(provider, tmp_path):
    y, _ = scene(64, seed=4)
    intensity = write_tif(tmp_path / "i.tif", y.astype(np.float32))
    decibel = write_tif(tmp_path / "db.tif", (10 * np.log10(y)).astype(np.float32))
    amplitude = write_tif(tmp_path / "a.tif", np.sqrt(y).astype(np.float32))
    outs = {}
    for name, path, dom in (("i", intensity, 0), ("a", amplitude, 1), ("db", decibel, 2)):
        outs[name] = str(tmp_path / f"out_{name}.tif")
        run({"INPUT": path, "INPUT_DOMAIN": dom, "METHOD": "gamma_map", "LOOKS": LOOKS, "OUTPUT": outs[name]})
    ref = read_tif(outs["i"])[0][0]
    np.testing.assert_allclose(read_tif(outs["a"])[0][0] ** 2, ref, rtol=1e-4)
    np.testing.assert_allclose(10 ** (read_tif(outs["db"])[0][0] / 10), ref, rtol=1e-4)


def test_looks_are_estimated_when_not_given(provider, tmp_path):
    y, _ = scene(128, seed=5, looks=2.0)
    path = write_tif(tmp_path / "y.tif", y.astype(np.float32))
    report = cf.classic_filter_raster(path, str(tmp_path / "o.tif"), "lee")
    assert report.looks[0] == pytest.approx(2.0, rel=0.25)


def test_bad_parameters_are_refused_before_any_work(provider, speckled, tmp_path):
    path = speckled[0]
    for params, words in (({"WINDOW_SIZE": 4}, "odd"), ({"METHOD": "refined_lee", "WINDOW_SIZE": 5}, "7x7"),
                          ({"METHOD": "median"}, "METHOD"), ({"WINDOW_SIZE": 33}, "WINDOW_SIZE")):
        with pytest.raises(QgsProcessingException, match=words):
            run({"INPUT": path, "OUTPUT": str(tmp_path / "o.tif"), **params})
    assert not (tmp_path / "o.tif").exists()
    with pytest.raises(QgsProcessingException, match="inputs are never overwritten"):
        run({"INPUT": path, "OUTPUT": path})
    with pytest.raises(InputError, match="window_size"):
        cf.classic_filter_raster(path, str(tmp_path / "o.tif"), "lee", window_size=8)


def test_cancel_leaves_no_output_and_progress_reaches_100(tmp_path):
    y, _ = scene(96, seed=6)
    path = write_tif(tmp_path / "y.tif", y.astype(np.float32))
    seen = []
    cf.classic_filter_raster(path, str(tmp_path / "ok.tif"), "frost", tile_size=32, progress=Progress(report=seen.append))
    assert seen[-1] == 100.0 and seen == sorted(seen)
    calls = []
    cancel = Progress(is_cancelled=lambda: len(calls) > 3, report=calls.append)
    with pytest.raises(Cancelled):
        cf.classic_filter_raster(path, str(tmp_path / "x.tif"), "lee", looks=LOOKS, tile_size=32, progress=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.tif", "y.tif"]


def test_memory_stays_flat_with_the_image_size(tmp_path):
    """Peak memory of a child process filtering 512x512 and 2048x2048 rasters (VmHWM), window 256."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    rng = np.random.default_rng(7)
    peaks = {}
    for size in (512, 2048):
        path = tmp_path / f"y{size}.tif"
        ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 1, gdal.GDT_Float32, ["TILED=YES"])
        for row in range(0, size, 256):
            ds.GetRasterBand(1).WriteArray(rng.gamma(LOOKS, 1 / LOOKS, (256, size)).astype(np.float32), 0, row)
        ds = None
        script = (f"import sys; sys.path.insert(0, {ROOT!r}); from despecknet_qgis.core import classic_filters as cf; "
                  f"cf.classic_filter_raster({str(path)!r}, {str(tmp_path / f'o{size}.tif')!r}, 'lee_sigma', "
                  f"looks={LOOKS}, tile_size=256); "
                  "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
        env = {**os.environ, "GDAL_CACHEMAX": "8"}  # GDAL's block cache (bounded at 64 MB in a run) kept out of it
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr
        peaks[size] = int(out.stdout.split()[-1]) / 1024
    print(f"peak memory (MB): {peaks}")
    # 16 times the pixels (30 MB more of Float32 input and output) for at most 10 MB more peak memory
    assert peaks[2048] - peaks[512] < 12, peaks


def test_headless_with_method_names(profile, speckled, tmp_path):
    out = tmp_path / "frost.tif"
    proc = run_qgis_process("run", "despecknet:classicfilter", "--", f"INPUT={speckled[0]}", "METHOD=frost",
                            "WINDOW_SIZE=5", f"OUTPUT={out}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (f,), _ = read_tif(out)
    y = speckled[1]
    valid = y != -1.0
    expected = cf.filter_intensity(y, valid, "frost", window_size=5)
    np.testing.assert_allclose(f[valid], expected[valid].astype(np.float32), rtol=1e-6)
    assert math.isclose(float(f[~valid].max()), -1.0)
