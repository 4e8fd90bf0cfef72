"""Temporal reference labels on simulated stacks where the changed parcels are known."""
import numpy as np
import pytest

from conftest import read_tif, write_tif
from despecknet_qgis.core.errors import DespeckNetError
from despecknet_qgis.core.simulate import db, simulate_reflectivity, simulate_speckle
from despecknet_qgis.core.temporal_label import cv2_quantile, estimate_looks, temporal_label


def stack(tmp_path, dates=20, size=192, looks=4.4, changed_share=0.15, seed=0, scale=1.0, prefix="d"):
    rng = np.random.default_rng(seed)
    scene = simulate_reflectivity((size, size), rng, parcel_size=32.0)
    labels = np.unique(scene.parcels)
    changed = np.isin(scene.parcels, rng.choice(labels, int(round(changed_share * len(labels))), replace=False))
    paths = []
    for t in range(dates):
        factor = 10 ** (rng.uniform(-6, 6, labels.max() + 1) / 10)
        x = np.where(changed, scene.reflectivity * factor[scene.parcels], scene.reflectivity)
        y = scale * x * simulate_speckle((size, size), looks, 0.0, rng)
        paths.append(write_tif(tmp_path / f"{prefix}{t:02d}.tif", y.astype(np.float32)))
    stack.scene = scene
    return paths, scene.reflectivity * scale, changed


def test_twenty_dates_with_changed_parcels(tmp_path):
    """The issue's acceptance case: 20 dates, 15% changed parcels."""
    paths, truth, changed = stack(tmp_path)
    report = temporal_label(paths, str(tmp_path / "label.tif"), str(tmp_path / "mask.tif"))
    label, mask = read_tif(tmp_path / "label.tif")[0][0], read_tif(tmp_path / "mask.tif")[0][0]
    stable = mask == 1
    assert np.isnan(label[~stable]).all() and np.isfinite(label[stable]).all()
    assert (~stable[changed]).mean() > 0.85  # most changed pixels masked
    assert stable[~changed].mean() > 0.95  # stable pixels kept
    error_db = np.abs(db(label[stable & ~changed]) - db(truth[stable & ~changed])).mean()
    assert error_db < 1.0
    assert 3.5 < report.looks < 5.0  # estimated L (true 4.4)
    assert report.stable_fraction == pytest.approx(stable.mean())


@pytest.mark.parametrize("rule", ["speckle_test", "db_std"])
def test_scale_free_rules_give_the_same_mask_at_any_calibration(tmp_path, rule):
    paths, _, _ = stack(tmp_path, dates=8, size=96, seed=1)
    scaled, _, _ = stack(tmp_path, dates=8, size=96, seed=1, scale=1e-3, prefix="s")
    temporal_label(paths, str(tmp_path / "l1.tif"), str(tmp_path / "m1.tif"), rule=rule, looks=4.4)
    temporal_label(scaled, str(tmp_path / "l2.tif"), str(tmp_path / "m2.tif"), rule=rule, looks=4.4)
    np.testing.assert_array_equal(read_tif(tmp_path / "m1.tif")[0][0], read_tif(tmp_path / "m2.tif")[0][0])


def test_paper_rule_depends_on_scaling(tmp_path):
    """Why the other rules exist: the raw threshold keeps all or nothing depending on units."""
    paths, _, _ = stack(tmp_path, dates=8, size=64, seed=2, scale=1e-3)
    big, _, _ = stack(tmp_path, dates=8, size=64, seed=2, scale=1e3, prefix="b")
    small = temporal_label(paths, str(tmp_path / "a.tif"), rule="paper", threshold=0.1)
    large = temporal_label(big, str(tmp_path / "b.tif"), rule="paper", threshold=0.1)
    assert small.stable_fraction > 0.99 and large.stable_fraction < 0.01


def test_multiband_raster_as_dates_equals_separate_files(tmp_path):
    paths, _, _ = stack(tmp_path, dates=6, size=64, seed=3)
    bands = [read_tif(p)[0][0] for p in paths]
    multi = write_tif(tmp_path / "multi.tif", bands)
    temporal_label(paths, str(tmp_path / "a.tif"), looks=4.4)
    temporal_label([multi], str(tmp_path / "b.tif"), looks=4.4)
    np.testing.assert_array_equal(read_tif(tmp_path / "a.tif")[0][0], read_tif(tmp_path / "b.tif")[0][0])


def test_multilook_smooths_the_label(tmp_path):
    paths, truth, changed = stack(tmp_path, dates=5, size=96, seed=4)
    temporal_label(paths, str(tmp_path / "l1.tif"), looks=4.4)
    temporal_label(paths, str(tmp_path / "l5.tif"), looks=4.4, multilook=5)
    l1, l5 = read_tif(tmp_path / "l1.tif")[0][0], read_tif(tmp_path / "l5.tif")[0][0]
    # Where the 5x5 window lies inside one untextured parcel, multilooking only removes noise.
    from scipy import ndimage

    parcels = stack.scene.parcels
    inside = (ndimage.maximum_filter(parcels, 5) == ndimage.minimum_filter(parcels, 5))
    inside &= ndimage.binary_erosion(stack.scene.homogeneous, np.ones((5, 5)))
    both = np.isfinite(l1) & np.isfinite(l5) & ~changed & inside
    assert both.sum() > 500
    err1 = np.abs(db(l1[both]) - db(truth[both])).mean()
    err5 = np.abs(db(l5[both]) - db(truth[both])).mean()
    assert err5 < 0.8 * err1


def test_speckle_quantile_and_look_estimate():
    # For L looks, E[CV^2] is about 1/L; the 99% quantile lies above it.
    q = cv2_quantile(20, 4.0, 0.01)
    assert 0.25 < q < 0.7
    rng = np.random.default_rng(0)
    x = rng.gamma(3.0, 1 / 3.0, (50000, 10))
    assert estimate_looks(x.var(axis=1, ddof=1) / x.mean(axis=1) ** 2, 10) == pytest.approx(3.0, rel=0.1)


def test_nodata_pixels_are_nodata_in_label_and_mask(tmp_path):
    paths, _, _ = stack(tmp_path, dates=4, size=64, seed=5)
    arr = read_tif(paths[1])[0][0]
    arr[:10, :10] = -1.0
    paths[1] = write_tif(tmp_path / "hole.tif", arr, nodata=-1.0)
    temporal_label(paths, str(tmp_path / "l.tif"), str(tmp_path / "m.tif"), looks=4.4)
    label, mask = read_tif(tmp_path / "l.tif")[0][0], read_tif(tmp_path / "m.tif")[0][0]
    assert np.isnan(label[:10, :10]).all() and (mask[:10, :10] == 255).all()


def test_mismatched_stacks_name_the_offending_layer(tmp_path):
    paths, _, _ = stack(tmp_path, dates=3, size=64, seed=6)
    small = write_tif(tmp_path / "small.tif", np.ones((60, 64), np.float32))
    with pytest.raises(DespeckNetError, match="small.tif is 64x60"):
        temporal_label(paths + [small], str(tmp_path / "l.tif"))
    shifted = write_tif(tmp_path / "shifted.tif", np.ones((64, 64), np.float32), origin=(500010.0, 4000000.0))
    with pytest.raises(DespeckNetError, match="shifted.tif has another geotransform"):
        temporal_label(paths + [shifted], str(tmp_path / "l.tif"))
    other_crs = write_tif(tmp_path / "crs.tif", np.ones((64, 64), np.float32), epsg=32632)
    with pytest.raises(DespeckNetError, match="crs.tif has another CRS"):
        temporal_label(paths + [other_crs], str(tmp_path / "l.tif"))
    assert not (tmp_path / "l.tif").exists()
