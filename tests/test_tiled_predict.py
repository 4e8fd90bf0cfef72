"""Tiled despeckling of GeoTIFFs: seamless tiles, georeferencing, nodata, calibration, progress."""
import math
import os
import tracemalloc

import numpy as np
import pytest
from osgeo import gdal

from conftest import read_tif, speckled_scene, write_tif
from despecknet_qgis.core.errors import Cancelled, DespeckNetError
from despecknet_qgis.core.progress import Progress
from despecknet_qgis.core.tiled_predict import despeckle_raster


def run(despeckler, src, dst, **kw):
    return despeckle_raster(str(src), str(dst), despeckler, **kw)


def test_tiles_agree_with_whole_image(despeckler, tmp_path):
    y, _ = speckled_scene(150, seed=1)
    src = write_tif(tmp_path / "y.tif", y)
    run(despeckler, src, tmp_path / "whole.tif", tile_size=256)
    report = run(despeckler, src, tmp_path / "tiled.tif", tile_size=40, overlap=17)
    assert report.tiles == 16
    whole, tiled = read_tif(tmp_path / "whole.tif")[0][0], read_tif(tmp_path / "tiled.tif")[0][0]
    assert np.max(np.abs(tiled - whole) / whole) < 1e-4


def test_georeferencing_crs_and_nodata_are_kept(despeckler, tmp_path):
    y, _ = speckled_scene(96, seed=2)
    y[10:30, 40:70] = -9999.0
    src = write_tif(tmp_path / "y.tif", y, nodata=-9999.0, epsg=32631, origin=(612340.0, 5801230.0), pixel=10.0)
    noise_path = tmp_path / "n.tif"
    run(despeckler, src, tmp_path / "x.tif", noise_path=str(noise_path), tile_size=64)
    (x,), ds_out = read_tif(tmp_path / "x.tif")
    (n,), ds_noise = read_tif(noise_path)
    ds_in = gdal.Open(src)
    for ds in (ds_out, ds_noise):
        assert ds.GetGeoTransform() == ds_in.GetGeoTransform()
        assert ds.GetSpatialRef().IsSame(ds_in.GetSpatialRef())
        assert ds.GetRasterBand(1).GetNoDataValue() == -9999.0
    hole = y == -9999.0
    assert np.all(x[hole] == -9999.0) and np.all(n[hole] == -9999.0)
    assert np.all(x[~hole] > 0) and np.all(np.isfinite(x[~hole]))
    # Speckle estimate has mean about 1 (intensity domain).
    assert 0.3 < np.median(n[~hole]) < 3.0


def test_nodata_value_does_not_leak_into_neighbours(despeckler, tmp_path):
    y, _ = speckled_scene(96, seed=3)
    hole = np.zeros_like(y, bool)
    hole[30:60, 30:60] = True
    outputs = []
    for nd in (-9999.0, 0.0, 1e6):
        arr = np.where(hole, nd, y)
        src = write_tif(tmp_path / f"y{nd}.tif", arr, nodata=nd)
        run(despeckler, src, tmp_path / f"x{nd}.tif")
        outputs.append(read_tif(tmp_path / f"x{nd}.tif")[0][0])
    # Whatever number marks nodata, the valid pixels next to the hole come out the same.
    for other in outputs[1:]:
        np.testing.assert_allclose(other[~hole], outputs[0][~hole], rtol=1e-5)


def test_nan_nodata(despeckler, tmp_path):
    y, _ = speckled_scene(64, seed=4)
    y[:, :8] = np.nan
    src = write_tif(tmp_path / "y.tif", y, nodata=float("nan"))
    run(despeckler, src, tmp_path / "x.tif")
    (x,), ds = read_tif(tmp_path / "x.tif")
    assert math.isnan(ds.GetRasterBand(1).GetNoDataValue())
    assert np.isnan(x[:, :8]).all() and np.isfinite(x[:, 8:]).all()


@pytest.mark.parametrize("k", [1e-4, 1e-2, 1e2, 1e4])
def test_any_calibration_scale(despeckler, tmp_path, k):
    y, _ = speckled_scene(80, seed=5)
    run(despeckler, write_tif(tmp_path / "y.tif", y), tmp_path / "x.tif")
    run(despeckler, write_tif(tmp_path / "ky.tif", k * y), tmp_path / "kx.tif")
    x, kx = read_tif(tmp_path / "x.tif")[0][0], read_tif(tmp_path / "kx.tif")[0][0]
    assert np.max(np.abs(kx / (k * x) - 1)) < 0.01


def test_amplitude_and_decibel_domains_match_intensity(despeckler, tmp_path):
    y, _ = speckled_scene(72, seed=6)
    run(despeckler, write_tif(tmp_path / "i.tif", y), tmp_path / "xi.tif")
    run(despeckler, write_tif(tmp_path / "a.tif", np.sqrt(y)), tmp_path / "xa.tif", domain="amplitude")
    run(despeckler, write_tif(tmp_path / "d.tif", 10 * np.log10(y)), tmp_path / "xd.tif", domain="decibel")
    xi = read_tif(tmp_path / "xi.tif")[0][0]
    np.testing.assert_allclose(read_tif(tmp_path / "xa.tif")[0][0] ** 2, xi, rtol=1e-4)
    np.testing.assert_allclose(10 ** (read_tif(tmp_path / "xd.tif")[0][0] / 10), xi, rtol=1e-4)


def test_every_band_is_despeckled_on_its_own(despeckler, tmp_path):
    a, _ = speckled_scene(64, seed=7)
    b, _ = speckled_scene(64, seed=8)
    src = write_tif(tmp_path / "ab.tif", [a, 1000 * b])
    run(despeckler, src, tmp_path / "x_ab.tif")
    run(despeckler, write_tif(tmp_path / "b.tif", 1000 * b), tmp_path / "x_b.tif")
    run(despeckler, src, tmp_path / "x_2.tif", bands=[2])
    both = read_tif(tmp_path / "x_ab.tif")[0]
    assert len(both) == 2 and len(read_tif(tmp_path / "x_2.tif")[0]) == 1
    np.testing.assert_allclose(both[1], read_tif(tmp_path / "x_b.tif")[0][0], rtol=1e-5)
    np.testing.assert_allclose(read_tif(tmp_path / "x_2.tif")[0][0], both[1], rtol=1e-5)


def test_progress_per_tile_and_cancellation_leaves_nothing(despeckler, tmp_path):
    y, _ = speckled_scene(128, seed=9)
    src = write_tif(tmp_path / "y.tif", y)
    seen = []
    run(despeckler, src, tmp_path / "x.tif", tile_size=64, progress=Progress(report=seen.append))
    assert seen == sorted(seen) and seen[-1] == 100.0 and len(seen) >= 4

    calls = []

    def cancel_after_two_tiles():
        calls.append(1)
        return len(calls) > 3

    dst = tmp_path / "cancelled.tif"
    with pytest.raises(Cancelled):
        run(despeckler, src, dst, tile_size=64, progress=Progress(is_cancelled=cancel_after_two_tiles))
    assert not dst.exists()
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_memory_does_not_grow_with_image_size(despeckler, tmp_path):
    """Peak Python-side memory of a 2048-row run stays at the 512-row run's level (same width, same tile).

    The statistics pass reads strips of whole rows, so memory follows the width, never the number of rows.
    (Compared at 128 and 512 rows this held only while hashing the model file in 4 MB chunks raised both
    peaks: below 512 rows the strips are not yet full height.)"""
    peaks = {}
    for rows in (64, 512, 2048):  # the first run takes one-time allocations (imports, caches) out of the way
        y = np.random.default_rng(rows).gamma(1.0, 1.0, (rows, 256))
        src = write_tif(tmp_path / f"y{rows}.tif", y)
        tracemalloc.start()
        run(despeckler, src, tmp_path / f"x{rows}.tif", tile_size=64)
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    whole_image = 2048 * 256 * 8
    assert peaks[2048] < peaks[512] + whole_image / 8, peaks


def test_failed_run_keeps_the_previous_output(despeckler, tmp_path):
    y, _ = speckled_scene(64, seed=10)
    dst = tmp_path / "x.tif"
    dst.write_bytes(b"previous result")
    bad = y.copy()
    bad[5, 5] = -1.0
    with pytest.raises(DespeckNetError):
        run(despeckler, write_tif(tmp_path / "bad.tif", bad), dst)
    assert dst.read_bytes() == b"previous result"


def test_failing_second_output_leaves_no_temporary_file(despeckler, tmp_path):
    y, _ = speckled_scene(64, seed=11)
    src = write_tif(tmp_path / "y.tif", y)
    with pytest.raises(DespeckNetError, match="does not exist"):
        run(despeckler, src, tmp_path / "x.tif", noise_path=str(tmp_path / "missing_dir" / "n.tif"))
    assert sorted(os.listdir(tmp_path)) == ["y.tif"]


def test_statistics_pass_in_two_threads_gives_what_one_thread_gives(tmp_path, monkeypatch):
    """The statistics pass reads every other window on a second handle: same offset, pixels and looks."""
    import despecknet_qgis.core.raster as raster

    y, _ = speckled_scene(300, looks=3.0, seed=4)
    ds = gdal.Open(write_tif(tmp_path / "y.tif", y))
    results = {}
    for threads in (1, 2):
        monkeypatch.setattr(raster, "STATISTICS_THREADS", threads)
        results[threads] = raster.band_statistics(ds, 1, "intensity", "y.tif", 64, Progress())
    one, two = results[1], results[2]
    assert two.valid_pixels == one.valid_pixels == 300 * 300
    assert two.offset == pytest.approx(one.offset, abs=1e-12)
    assert two.looks == one.looks and 2.0 < one.looks < 4.0


@pytest.mark.parametrize("threads", [1, 2])
def test_statistics_pass_names_the_first_bad_value_whichever_thread_meets_it(tmp_path, monkeypatch, threads):
    """A NaN in the band's second window and a negative value in its fifth: the NaN is reported
    (the second window is the second thread's first one), and no output exists."""
    import despecknet_qgis.core.raster as raster
    from despecknet_qgis.core.errors import InputError

    y, _ = speckled_scene(320, seed=5)
    y[10, 70] = np.nan  # window 2 of the 64-pixel grid's first row
    y[10, 270] = -1.0  # window 5
    ds = gdal.Open(write_tif(tmp_path / "y.tif", y))
    monkeypatch.setattr(raster, "STATISTICS_THREADS", threads)
    with pytest.raises(InputError, match="NaN or infinite"):
        raster.band_statistics(ds, 1, "intensity", "y.tif", 64, Progress())


def test_statistics_pass_cancelled_stops_both_threads(tmp_path):
    import threading

    import despecknet_qgis.core.raster as raster

    y, _ = speckled_scene(512, seed=6)
    ds = gdal.Open(write_tif(tmp_path / "y.tif", y))
    calls = []
    progress = Progress(is_cancelled=lambda: calls.append(1) or len(calls) > 2)
    with pytest.raises(Cancelled):
        raster.band_statistics(ds, 1, "intensity", "y.tif", 64, progress)
    assert not [t for t in threading.enumerate() if t.name == "despecknet-statistics"]
