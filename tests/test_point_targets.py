"""Bright point targets keep their energy: the speckle law's quantiles, the looks estimate, the test."""
import numpy as np
import pytest
from scipy import ndimage, special, stats

from conftest import read_tif, write_tif
from despecknet_qgis.core import point_targets as pt
from despecknet_qgis.core.simulate import observe, simulate_reflectivity, simulate_speckle
from despecknet_qgis.core.tiled_predict import despeckle_raster


@pytest.fixture(scope="module")
def bundled():
    """The bundled model: the test needs a network that despeckles, not random weights."""
    from despecknet_qgis.core.inference import Despeckler

    return Despeckler(device="cpu", with_noise=False)


@pytest.mark.parametrize("x", [0.2, 1.0, 2.5, 4.9, 30.0])
def test_trigamma_and_its_inverse_match_scipy(x):
    assert pt.trigamma(x) == pytest.approx(float(special.polygamma(1, x)), rel=1e-9)
    assert pt.looks_from_log_variance(float(special.polygamma(1, x))) == pytest.approx(x, rel=1e-6)


@pytest.mark.parametrize("looks", [0.7, 1.0, 2.0, 4.9, 10.0])
@pytest.mark.parametrize("pfa", [1e-3, 1e-5])
def test_speckle_quantile_is_the_gamma_laws(looks, pfa):
    assert pt.speckle_quantile(looks, pfa) == pytest.approx(stats.gamma.ppf(1 - pfa, looks, scale=1 / looks), rel=1e-4)


@pytest.mark.parametrize("looks, correlation", [(1.0, 0.0), (1.0, 0.8), (4.9, 0.7)])
def test_looks_are_estimated_on_the_flattest_blocks_of_a_textured_scene(looks, correlation):
    rng = np.random.default_rng(5)
    scene = simulate_reflectivity((256, 256), rng, realistic=True)
    y, _ = observe(scene.reflectivity, scene.targets, looks, correlation, rng)
    estimator = pt.LooksEstimator()
    estimator.add(y, np.ones(y.shape, bool))
    assert estimator.looks() == pytest.approx(looks, rel=0.12)


def test_looks_estimate_does_not_depend_on_how_the_raster_is_cut():
    rng = np.random.default_rng(6)
    y = rng.gamma(2.0, 0.5, (200, 184)) * np.exp(ndimage.gaussian_filter(rng.normal(size=(200, 184)), 6) * 3)
    valid = np.ones(y.shape, bool)
    whole = pt.LooksEstimator()
    whole.add(y, valid)
    cut = pt.LooksEstimator()
    for r in range(0, 200, 48):
        for c in range(0, 184, 32):
            cut.add(y[r : r + 48, c : c + 32], valid[r : r + 48, c : c + 32], r, c)
    assert cut.blocks == whole.blocks and cut.looks() == whole.looks()


def test_no_fully_valid_block_gives_no_estimate():
    estimator = pt.LooksEstimator()
    estimator.add(np.ones((40, 40)), np.eye(40, dtype=bool))
    assert estimator.looks() is None


def test_false_alarms_on_pure_speckle_stay_at_the_asked_rate():
    rng = np.random.default_rng(7)
    clean = np.full((512, 512), 3.0)
    noisy = clean * simulate_speckle(clean.shape, 1.0, 0.0, rng)
    valid = np.ones(clean.shape, bool)
    _, rare = pt.preserve_point_targets(noisy, clean, valid, 1.0, pfa=1e-5)
    _, frequent = pt.preserve_point_targets(noisy, clean, valid, 1.0, pfa=1e-3)
    n = clean.size
    assert rare.sum() <= 10  # 2.6 expected
    assert 0.6 * 1e-3 * n < frequent.sum() < 1.4 * 1e-3 * n


def test_only_the_candidates_median_is_taken_and_it_is_the_full_filters():
    rng = np.random.default_rng(8)
    noisy = rng.gamma(1.0, 1.0, (300, 200))
    noisy[::37, ::23] *= 500.0
    clean = ndimage.uniform_filter(rng.gamma(1.0, 1.0, noisy.shape), 7)
    valid = rng.uniform(size=noisy.shape) > 0.02
    _, targets = pt.preserve_point_targets(noisy, clean, valid, 1.0)
    clutter = ndimage.median_filter(np.where(valid, clean, np.inf), 5, mode="reflect")
    expected = valid & (noisy > clean) & (noisy > pt.speckle_quantile(1.0) * clutter)
    assert targets.sum() > 50 and np.array_equal(targets, expected)


def test_nodata_pixels_are_never_targets_nor_clutter():
    clean = np.ones((64, 64))
    noisy = np.ones((64, 64))
    noisy[30, 30] = noisy[10, 10] = 1e4
    valid = np.ones(noisy.shape, bool)
    valid[10, 10] = False  # an invalid bright pixel
    valid[28:33, 28:33] = False
    valid[30, 30] = True  # a valid bright pixel among nodata: its clutter level is unknown
    out, targets = pt.preserve_point_targets(noisy, clean, valid, 1.0)
    assert not targets.any() and np.array_equal(out, clean)


def test_despeckle_gives_point_targets_their_energy_back(bundled, tmp_path):
    rng = np.random.default_rng(9)
    scene = simulate_reflectivity((192, 192), rng, realistic=True)
    y, reference = observe(scene.reflectivity, scene.targets, 1.0, 0.0, rng)
    src = write_tif(tmp_path / "y.tif", y)
    despeckle_raster(str(src), str(tmp_path / "kept.tif"), bundled, tile_size=64)
    despeckle_raster(str(src), str(tmp_path / "shrunk.tif"), bundled, tile_size=64, point_targets=False)
    kept, shrunk = read_tif(tmp_path / "kept.tif")[0][0], read_tif(tmp_path / "shrunk.tif")[0][0]
    at = scene.targets > 100 * ndimage.median_filter(scene.reflectivity, 5)
    assert at.sum() >= 5
    # Strong targets get their measured intensity back (unless the network already gave more);
    # elsewhere nearly nothing changes.
    measured = np.isclose(kept[at], y[at], rtol=1e-6)
    assert measured.mean() >= 0.75 and np.all(kept[at][~measured] == shrunk[at][~measured])
    assert abs(kept[at].sum() / reference[at].sum() - 1) < abs(shrunk[at].sum() / reference[at].sum() - 1)
    assert (kept != shrunk).mean() < 0.01
    # the log's and the metadata's count is the pixels that took their measured intensity
    report = despeckle_raster(str(src), str(tmp_path / "again.tif"), bundled, tile_size=64)
    restored = int(np.count_nonzero(kept != shrunk))
    assert report.point_targets_restored == [restored] and restored >= measured.sum()
    from osgeo import gdal

    out = gdal.Open(str(tmp_path / "again.tif"))
    assert out.GetRasterBand(1).GetMetadataItem("DESPECKNET_POINT_TARGETS_RESTORED") == str(restored)


def test_point_targets_do_not_make_tiles_show(despeckler, tmp_path):
    rng = np.random.default_rng(10)
    scene = simulate_reflectivity((150, 150), rng, realistic=True)
    y, _ = observe(scene.reflectivity, scene.targets, 1.0, 0.8, rng)
    src = write_tif(tmp_path / "y.tif", y)
    despeckle_raster(str(src), str(tmp_path / "whole.tif"), despeckler, tile_size=256)
    despeckle_raster(str(src), str(tmp_path / "tiled.tif"), despeckler, tile_size=40)
    whole, tiled = read_tif(tmp_path / "whole.tif")[0][0], read_tif(tmp_path / "tiled.tif")[0][0]
    assert np.max(np.abs(tiled - whole) / whole) < 1e-4


def test_window_minimum_equals_scipys_minimum_filter_with_reflected_edges():
    from despecknet_qgis.core.point_targets import window_minimum

    values = np.random.default_rng(4).gamma(1.0, 1.0, (61, 47))
    values[0, 0], values[30, 20] = np.inf, 0.0
    for size in (3, 5, 7):
        np.testing.assert_array_equal(window_minimum(values, size), ndimage.minimum_filter(values, size, mode="reflect"))


def test_a_constant_fill_area_is_not_taken_for_speckle_when_the_looks_are_estimated():
    """A 96x96 area of one undeclared fill value made the estimate 1e5 looks: the multi-look model was
    chosen and a third of the speckle was kept as "point targets"."""
    rng = np.random.default_rng(5)
    y = rng.gamma(1.0, 1.0, (256, 256))
    y[80:176, 80:176] = 0.37
    estimator = pt.LooksEstimator()
    estimator.add(y, np.ones(y.shape, bool))
    assert estimator.looks() == pytest.approx(1.0, rel=0.15)
