"""Sentinel-1 SAFE products (folder, zip, manifest.safe) as inputs, and GDAL names in multi-layer
parameters (issue 9, items 1 and 2). A small SAFE product is built by tests/fake_safe.py the way
GDAL's SENTINEL1 driver reads it; real GDAL, real QGIS, real ONNX Runtime."""
import os
import re
import shutil
import zipfile

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from conftest import read_tif, speckled_scene, write_tif
from despecknet_qgis.core.errors import InputError
from despecknet_qgis.core.sentinel1 import calibrated_raster, is_sentinel1_input, sigma0_names
from despecknet_qgis.core.tiled_predict import despeckle_raster
from fake_safe import build_safe, expected_sigma0, zip_safe


def run(alg, params):
    import processing

    return processing.run(alg, params, feedback=QgsProcessingFeedback())


@pytest.fixture()
def safe(tmp_path):
    root, numbers = build_safe(tmp_path / "download")
    return root, numbers, zip_safe(root, tmp_path / (os.path.basename(root)[:-5] + ".zip"))


def test_gdal_lists_no_calibrated_grd_measurement(safe):
    """Why the plugin calibrates itself: GDAL's driver gives a GRD's digital numbers only."""
    root, _, _ = safe
    names = [v for k, v in gdal.Open(root).GetMetadata("SUBDATASETS").items() if k.endswith("_NAME")]
    assert names and not any(":SIGMA0:" in n for n in names)
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        assert gdal.Open(f"SENTINEL1_CALIB:SIGMA0:{root}/manifest.safe:IW_VV:INTENSITY") is None
    finally:
        gdal.PopErrorHandler()


@pytest.mark.parametrize("form", ["folder", "zip", "manifest"])
def test_folder_zip_and_manifest_resolve_to_sigma0_of_each_polarisation(safe, tmp_path, form):
    root, numbers, zpath = safe
    given = {"folder": root, "zip": zpath, "manifest": os.path.join(root, "manifest.safe")}[form]
    assert is_sentinel1_input(given)
    names = sigma0_names(given)
    assert [n.rsplit(":", 2)[1] for n in names] == ["IW_VV", "IW_VH"]
    assert all(n.startswith("SENTINEL1_CALIB:SIGMA0:") and n.endswith(":INTENSITY") for n in names)
    if form == "zip":
        assert names[0].split(":")[2].startswith("/vsizip/")
    ds = gdal.Open(calibrated_raster(given, str(tmp_path / f"cal_{form}")))
    assert [ds.GetRasterBand(b).GetDescription() for b in (1, 2)] == ["VV", "VH"]
    for b, pol in ((1, "VV"), (2, "VH")):
        np.testing.assert_allclose(ds.GetRasterBand(b).ReadAsArray(), expected_sigma0(numbers[pol]), rtol=1e-6)
    assert ds.GetGCPCount() > 0 and ds.GetMetadataItem("CALIBRATION") == "SIGMA0"


def test_a_sigma0_name_gives_its_polarisation(safe, tmp_path):
    root, numbers, zpath = safe
    vh = [n for n in sigma0_names(zpath) if ":IW_VH:" in n][0]
    ds = gdal.Open(calibrated_raster(vh, str(tmp_path / "cal")))
    assert ds.RasterCount == 1 and ds.GetRasterBand(1).GetDescription() == "VH"
    np.testing.assert_allclose(ds.GetRasterBand(1).ReadAsArray(), expected_sigma0(numbers["VH"]), rtol=1e-6)


def test_despeckle_of_a_safe_product_keeps_polarisation_names_and_equals_its_sigma0(
        provider, tiny_model, safe, tmp_path):
    root, numbers, zpath = safe
    reference = write_tif(tmp_path / "sigma0.tif", [expected_sigma0(numbers[p]).astype(np.float32) for p in ("VV", "VH")],
                          nodata=0.0)
    run("despecknet:despeckle", {"INPUT": reference, "MODEL": tiny_model[0], "DEVICE": 1,
                                 "OUTPUT": str(tmp_path / "ref.tif")})
    expected = read_tif(tmp_path / "ref.tif")[0]
    for k, given in enumerate((root, zpath)):
        out = str(tmp_path / f"out{k}.tif")
        run("despecknet:despeckle", {"INPUT": given, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": out})
        bands, ds = read_tif(out)
        assert [ds.GetRasterBand(b).GetDescription() for b in (1, 2)] == ["VV", "VH"]
        for got, want in zip(bands, expected):
            np.testing.assert_allclose(got, want, rtol=1e-4)


def test_despeckle_of_a_sigma0_name_equals_that_band_of_the_product(provider, tiny_model, safe, tmp_path):
    root, _, _ = safe
    vh = [n for n in sigma0_names(root) if ":IW_VH:" in n][0]
    run("despecknet:despeckle", {"INPUT": root, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": str(tmp_path / "a.tif")})
    run("despecknet:despeckle", {"INPUT": vh, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": str(tmp_path / "b.tif")})
    both, single = read_tif(tmp_path / "a.tif")[0], read_tif(tmp_path / "b.tif")[0]
    assert len(single) == 1
    np.testing.assert_allclose(single[0], both[1], rtol=1e-5)


def test_safe_without_measurement_is_a_clear_error(provider, tiny_model, tmp_path):
    root, _ = build_safe(tmp_path, with_measurement=False)
    with pytest.raises(InputError, match=r"no measurement file for VV, VH.*Download the product again"):
        sigma0_names(root)
    with pytest.raises(QgsProcessingException, match=r"INPUT.*no measurement file.*Download the product again"):
        run("despecknet:despeckle", {"INPUT": root, "MODEL": tiny_model[0], "DEVICE": 1,
                                     "OUTPUT": str(tmp_path / "out.tif")})
    assert not os.path.exists(tmp_path / "out.tif")


def test_safe_with_a_measurement_gone_missing_names_it(safe, tmp_path):
    root, _, _ = safe
    broken = shutil.copytree(root, tmp_path / "broken" / os.path.basename(root))
    vh = [f for f in os.listdir(broken / "measurement") if "-vh-" in f][0]
    os.remove(broken / "measurement" / vh)
    with pytest.raises(InputError, match=rf"no measurement file for VH \(.*{vh}\)"):
        sigma0_names(str(broken))


def test_safe_with_damaged_calibration_is_a_clear_error(safe, tmp_path):
    root, _, _ = safe
    calibration = os.path.join(root, "annotation", "calibration")
    for name in os.listdir(calibration):
        with open(os.path.join(calibration, name), "w") as f:
            f.write("<calibration><calibrationVectorList>")
    with pytest.raises(InputError, match=r"not valid XML.*damaged.*Download it again"):
        calibrated_raster(root, str(tmp_path / "cal"))


def test_zip_without_a_product_is_not_taken_for_one(tmp_path):
    y, _ = speckled_scene(48, seed=3)
    src = write_tif(tmp_path / "y.tif", y)
    zpath = tmp_path / "y.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(src, "y.tif")
    assert not is_sentinel1_input(str(zpath))


def test_slc_product_is_refused_with_what_to_do(provider, tiny_model, tmp_path):
    root, _ = build_safe(tmp_path, product_type="SLC")
    with pytest.raises(InputError, match=r"SLC product.*deburst and calibrate"):
        sigma0_names(root)
    with pytest.raises(QgsProcessingException, match=r"INPUT.*SLC product"):
        run("despecknet:despeckle", {"INPUT": root, "MODEL": tiny_model[0], "DEVICE": 1,
                                     "OUTPUT": str(tmp_path / "out.tif")})


def test_core_despeckles_the_calibrated_product(despeckler, safe, tmp_path):
    root, numbers, _ = safe
    out = str(tmp_path / "o.tif")
    report = despeckle_raster(calibrated_raster(root, str(tmp_path / "cal")), out, despeckler)
    assert report is not None and read_tif(out)[1].RasterCount == 2


def test_a_decibel_output_of_a_product_does_not_say_its_domain_is_intensity(despeckler, safe, tmp_path, monkeypatch):
    """The calibrated file said DOMAIN=intensity, which every output copied: a dB output said DOMAIN=intensity
    beside DESPECKNET_OUTPUT_DOMAIN=decibel; SOURCE_PRODUCT was relative where the product was named so."""
    root, _, _ = safe
    monkeypatch.chdir(os.path.dirname(root))
    out = str(tmp_path / "db.tif")
    despeckle_raster(calibrated_raster(os.path.basename(root), str(tmp_path / "cal")), out, despeckler,
                     output_domain="decibel")
    ds = gdal.Open(out)
    meta, unit = ds.GetMetadata(), ds.GetRasterBand(1).GetUnitType()
    ds = None
    assert "DOMAIN" not in meta and meta["DESPECKNET_OUTPUT_DOMAIN"] == "decibel" and unit == "dB"
    assert meta["SOURCE_PRODUCT"] == os.path.join(root, "manifest.safe")


# --- multi-layer parameters take GDAL dataset names (issue 9, item 1) -------------------------

@pytest.fixture()
def dates_zipped(tmp_path):
    rng = np.random.default_rng(4)
    scene = 0.05 + 0.05 * rng.random((48, 48))
    paths = [write_tif(tmp_path / f"d{i}.tif", scene * rng.exponential(1.0, scene.shape)) for i in range(3)]
    zpath = tmp_path / "dates.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in paths:
            z.write(p, f"stack/{os.path.basename(p)}")
    return paths, [f"/vsizip/{zpath}/stack/{os.path.basename(p)}" for p in paths]


def test_multiple_layers_parameter_accepts_vsizip_names(provider, dates_zipped, tmp_path):
    plain, zipped = dates_zipped
    run("despecknet:temporallabel", {"INPUTS": plain, "OUTPUT": str(tmp_path / "a.tif")})
    run("despecknet:temporallabel", {"INPUTS": zipped, "OUTPUT": str(tmp_path / "b.tif")})
    a, b = read_tif(tmp_path / "a.tif")[0][0], read_tif(tmp_path / "b.tif")[0][0]
    assert np.isfinite(a).any() and np.array_equal(np.nan_to_num(a, nan=-1), np.nan_to_num(b, nan=-1))


def test_multiple_layers_parameter_keeps_the_order_of_mixed_names(provider, dates_zipped, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingContext

    plain, zipped = dates_zipped
    alg = QgsApplication.processingRegistry().createAlgorithmById("despecknet:temporallabel")
    mixed = [zipped[0], plain[1], zipped[2]]
    context = QgsProcessingContext()  # owns the layers
    layers = alg.parameterAsLayerList({"INPUTS": mixed}, "INPUTS", context)
    assert [l.source() for l in layers] == mixed


def test_multiple_layers_parameter_names_a_bad_vsizip_name(provider, dates_zipped, tmp_path):
    _, zipped = dates_zipped
    bad = zipped[1].replace("d1.tif", "missing.tif")
    with pytest.raises(QgsProcessingException, match=r"INPUTS.*missing\.tif"):
        run("despecknet:temporallabel", {"INPUTS": [zipped[0], bad], "OUTPUT": str(tmp_path / "b.tif")})


def test_a_changed_product_is_calibrated_again(safe, tmp_path):
    root, numbers, _ = safe
    first = calibrated_raster(root, str(tmp_path / "cal"))
    before = gdal.Open(first).ReadAsArray()[0]
    measurement = os.path.join(root, "measurement", [f for f in os.listdir(os.path.join(root, "measurement"))
                                                     if "-vv-" in f][0])
    ds = gdal.Open(measurement, gdal.GA_Update)
    ds.GetRasterBand(1).WriteArray(numbers["VV"] // 2)
    ds = None
    later = os.path.getmtime(first) + 10
    os.utime(measurement, (later, later))
    again = calibrated_raster(root, str(tmp_path / "cal"))
    after = gdal.Open(again).ReadAsArray()[0]
    np.testing.assert_allclose(after, expected_sigma0(numbers["VV"] // 2), rtol=1e-6)
    assert not np.allclose(after, before)


def test_resolve_input_leaves_other_rasters_alone_and_calibrates_products(safe, tmp_path):
    from despecknet_qgis.core.sentinel1 import resolve_input

    root, numbers, zpath = safe
    plain = write_tif(tmp_path / "y.tif", speckled_scene(48, seed=2)[0])
    assert resolve_input(plain) == plain and resolve_input(f"/vsizip/{zpath}/x.tif") == f"/vsizip/{zpath}/x.tif"
    ds = gdal.Open(resolve_input(zpath, str(tmp_path / "cal")))
    np.testing.assert_allclose(ds.GetRasterBand(2).ReadAsArray(), expected_sigma0(numbers["VH"]), rtol=1e-6)


def test_batch_entry_despeckles_a_zipped_safe_product(tiny_model, safe, tmp_path):
    from despecknet_qgis.batch.run import run_batch

    _, _, zpath = safe
    report = run_batch([zpath], str(tmp_path / "out"), model=tiny_model[0], workers=1, processes=False,
                       log=lambda *a: None)
    assert report.done
    outputs = [f for f in os.listdir(tmp_path / "out") if f.endswith(".tif")]
    assert len(outputs) == 1 and outputs[0].startswith("S1A_IW_GRDH")
    ds = gdal.Open(str(tmp_path / "out" / outputs[0]))
    assert [ds.GetRasterBand(b).GetDescription() for b in (1, 2)] == ["VV", "VH"]


def test_a_product_opened_as_a_project_layer_is_despeckled_calibrated(provider, tiny_model, safe, tmp_path):
    """QGIS opens a SAFE product as digital numbers (UNCALIB); choosing that layer gives sigma0."""
    from qgis.core import Qgis, QgsProject, QgsRasterLayer

    root, _, _ = safe
    run("despecknet:despeckle", {"INPUT": root, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": str(tmp_path / "a.tif")})
    uncalibrated = f"SENTINEL1_CALIB:UNCALIB:{root}/manifest.safe:IW_VH:AMPLITUDE"
    layer = QgsRasterLayer(uncalibrated, "VH digital numbers", "gdal")
    assert layer.isValid() and layer.dataProvider().dataType(1) == Qgis.UInt16  # QGIS reads the DN
    QgsProject.instance().addMapLayer(layer)
    try:
        run("despecknet:despeckle", {"INPUT": layer.id(), "MODEL": tiny_model[0], "DEVICE": 1,
                                     "OUTPUT": str(tmp_path / "b.tif")})
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    both, single = read_tif(tmp_path / "a.tif")[0], read_tif(tmp_path / "b.tif")[0]
    np.testing.assert_allclose(single[0], both[1], rtol=1e-5)


def test_beta0_name_uses_the_beta_nought_lut(safe, tmp_path):
    root, numbers, _ = safe
    calibration = os.path.join(root, "annotation", "calibration")
    for name in os.listdir(calibration):  # beta0 LUT twice the sigma0 one: a quarter of the intensity
        path = os.path.join(calibration, name)
        text = open(path).read()
        text = re.sub(r"<betaNought count=\"(\d+)\">([^<]*)</betaNought>",
                      lambda m: f'<betaNought count="{m.group(1)}">' + " ".join(str(2 * float(v)) for v in m.group(2).split())
                      + "</betaNought>", text)
        open(path, "w").write(text)
    ds = gdal.Open(calibrated_raster(f"SENTINEL1_CALIB:BETA0:{root}/manifest.safe:IW_VV:INTENSITY", str(tmp_path / "c")))
    assert ds.GetMetadataItem("CALIBRATION") == "BETA0"
    np.testing.assert_allclose(ds.ReadAsArray(), expected_sigma0(numbers["VV"]) / 4, rtol=1e-6)


def test_qgis_process_despeckles_a_zipped_safe_into_decibels(profile, tiny_model, safe, tmp_path):
    """The README's headless example: the product's zip as INPUT, a dB output named by polarisation."""
    import json

    from conftest import run_qgis_process

    _, _, zpath = safe
    out = tmp_path / "vv_vh_db.tif"
    proc = run_qgis_process("--json", "run", "despecknet:despeckle", "--", f"INPUT={zpath}", f"MODEL={tiny_model[0]}",
                            "DEVICE=cpu", "OUTPUT_DOMAIN=decibel", f"OUTPUT={out}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["results"]["OUTPUT"] == str(out)
    ds = gdal.Open(str(out))
    assert [ds.GetRasterBand(b).GetDescription() for b in (1, 2)] == ["VV", "VH"]
    assert np.nanmax(ds.ReadAsArray()) < 10  # decibels of sigma0, not digital numbers


def test_qgis_process_multiple_layers_take_vsizip_names(profile, dates_zipped, tmp_path):
    from conftest import run_qgis_process

    _, zipped = dates_zipped
    proc = run_qgis_process("--json", "run", "despecknet:temporallabel", "--", *[f"INPUTS={z}" for z in zipped],
                            f"OUTPUT={tmp_path / 'label.tif'}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.exists(tmp_path / "label.tif")


def test_safe_folder_without_manifest_is_named_before_any_work(provider, tiny_model, safe, tmp_path):
    root, _, _ = safe
    os.remove(os.path.join(root, "manifest.safe"))
    with pytest.raises(QgsProcessingException, match=r"INPUT:.*has no manifest\.safe.*not a complete"):
        run("despecknet:despeckle", {"INPUT": root, "MODEL": tiny_model[0], "DEVICE": 1,
                                     "OUTPUT": str(tmp_path / "out.tif")})
    assert not os.path.exists(tmp_path / "out.tif")


def test_calibrated_products_do_not_fill_the_disk(safe, tmp_path):
    """Each calibrated product is a full copy (about 1.7 GB a polarisation for an IW GRD): the cache keeps a few."""
    import shutil

    from despecknet_qgis.core.sentinel1 import CACHED_PRODUCTS

    root, _, _ = safe
    cache = tmp_path / "cal"
    made = []
    for k in range(CACHED_PRODUCTS + 2):
        copy = tmp_path / f"copy{k}" / os.path.basename(root)
        shutil.copytree(root, copy)
        made.append(calibrated_raster(str(copy), str(cache)))
    kept = sorted(str(p) for p in cache.glob("*.tif"))
    assert len(kept) == CACHED_PRODUCTS and made[-1] in kept and made[0] not in kept
    assert not list(cache.glob(".*partial*"))  # no partial file left behind
    locks = {p.name for p in cache.glob(".*.lock")}  # empty lock files of the kept products only
    assert locks <= {f".{os.path.basename(k)}.{kind}.lock" for k in kept for kind in ("writing", "use")}


def test_a_full_disk_leaves_no_calibrated_product(safe, tmp_path):
    """GDAL reports a full disk only when blocks are flushed: the copy is read back before it is used."""
    import subprocess

    from despecknet_qgis.core.errors import OutputError

    root, _, _ = safe
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(tiny)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(OutputError):
            calibrated_raster(root, str(tiny))
        assert os.listdir(tiny) == []
    finally:
        subprocess.run(["umount", str(tiny)])


def test_parameter_checks_do_not_calibrate_the_product(provider, safe, tmp_path):
    """QGIS's dialog runs the checks in its GUI thread: calibrating a full GRD there would freeze QGIS for
    tens of seconds. The checks read the product's XML; the run calibrates, in its background task."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingUtils

    root, _, zpath = safe
    cache = os.path.join(QgsProcessingUtils.tempFolder(), "sentinel1")
    before = set(os.listdir(cache)) if os.path.isdir(cache) else set()
    alg = QgsApplication.processingRegistry().createAlgorithmById("despecknet:despeckle")
    for product in (root, zpath, os.path.join(root, "manifest.safe")):
        ok, message = alg.checkParameterValues({"INPUT": product, "OUTPUT": str(tmp_path / "o.tif")},
                                               QgsProcessingContext())
        assert ok, message
    after = set(os.listdir(cache)) if os.path.isdir(cache) else set()
    assert after == before
    broken = tmp_path / "broken" / os.path.basename(root)
    shutil.copytree(root, broken)
    os.remove(broken / "manifest.safe")
    ok, message = alg.checkParameterValues({"INPUT": str(broken), "OUTPUT": str(tmp_path / "o.tif")},
                                           QgsProcessingContext())
    assert not ok and "manifest.safe" in message


def test_areas_and_points_on_a_product_georeferenced_by_gcps_measure_the_pixels_under_them(provider, safe, tmp_path):
    """A GRD has GCPs, no geotransform: speckle statistics found no pixel under a polygon, and quality's
    C_NN read longitude and latitude as column and row (0.63 dB instead of 33.37), silently."""
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    from despecknet_qgis.core.metrics import c_nn
    from despecknet_qgis.core.raster import check_same_grid
    from despecknet_qgis.core.region_stats import region_statistics

    root, numbers, _ = safe
    cal = calibrated_raster(root, str(tmp_path / "cal"))
    assert gdal.Open(cal).GetGeoTransform(can_return_null=True) is None and gdal.Open(cal).GetGCPCount() > 3
    lon = lambda col: 7.0 + 0.0003 * col  # noqa: E731 - tests/fake_safe.py's GCPs
    lat = lambda row: 45.0 + 0.0002 * row  # noqa: E731
    wkt = (f"POLYGON(({lon(2)} {lat(2)},{lon(38)} {lat(2)},{lon(38)} {lat(62)},{lon(2)} {lat(62)},"
           f"{lon(2)} {lat(2)}))")
    stats = region_statistics(cal, [wkt])[0]
    truth = expected_sigma0(numbers["VV"])[2:62, 2:38]
    assert abs(stats.pixels - truth.size) < 0.1 * truth.size
    assert stats.mean == pytest.approx(truth.mean(), rel=0.03)

    target = str(tmp_path / "target.tif")
    gdal.Translate(target, cal, bandList=[1])
    ds = gdal.Open(target, gdal.GA_Update)
    a = ds.GetRasterBand(1).ReadAsArray()
    a[30, 60] = 1000 * a.mean()
    ds.GetRasterBand(1).WriteArray(a)
    ds = None
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(lon(60.5), lat(30.5))))  # the centre of row 30, column 60
    points.dataProvider().addFeatures([f])
    result = run("despecknet:quality", {"INPUT": target, "NOISY": target, "POINTS": points, "BAND": 1})
    assert result["CNN"] == pytest.approx(c_nn(a, 30, 60), abs=0.01)

    moved = str(tmp_path / "moved.tif")
    gdal.Translate(moved, cal, GCPs=[gdal.GCP(g.GCPX + 0.01, g.GCPY, 0.0, g.GCPPixel, g.GCPLine)
                                     for g in gdal.Open(cal).GetGCPs()], outputSRS="EPSG:4326")
    with pytest.raises(InputError, match="other ground control points"):
        check_same_grid(gdal.Open(cal), cal, gdal.Open(moved), moved)


def test_concurrent_tasks_calibrate_a_product_once_and_pruning_spares_a_product_in_use(safe, tmp_path, monkeypatch):
    """The batch runs a task per band, each asking for the whole product: 6 products were calibrated 12 to 18
    times, and pruning deleted products other tasks were about to read (scenes failed spuriously)."""
    import shutil
    import threading

    from despecknet_qgis.core import sentinel1 as s1
    from despecknet_qgis.core.raster import open_raster

    root, _, _ = safe
    cache = str(tmp_path / "cal")
    writes = []
    write = s1._write_sigma0
    monkeypatch.setattr(s1, "_write_sigma0", lambda *a, **k: (writes.append(a[2]), write(*a, **k)))
    results, gate = [], threading.Barrier(4)

    def task():
        gate.wait()
        results.append(calibrated_raster(root, cache))

    threads = [threading.Thread(target=task) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(writes) == 1

    monkeypatch.setattr(s1, "default_folder", lambda: cache)  # open_raster resolves the product into this cache
    held = open_raster(root)  # a task reading the product: it holds the product's use lock
    for k in range(3):
        copy = tmp_path / f"copy{k}" / os.path.basename(root)
        shutil.copytree(root, copy)
        calibrated_raster(str(copy), cache)
    removed = s1.prune_calibrated(cache, keep=results[0] + ".none", products=1)
    assert results[0] not in removed and os.path.exists(results[0])  # in use: spared
    assert len(removed) == 3
    del held  # the dataset closed: its lock is released
    import gc

    gc.collect()
    assert s1.prune_calibrated(cache, keep=results[0] + ".none", products=1) == [results[0]]


def test_a_polarisation_whose_calibration_the_manifest_does_not_link_is_not_dropped_silently(tmp_path):
    """The product came out with VV only, as if it had one polarisation."""
    root, _ = build_safe(tmp_path / "b")
    manifest = os.path.join(root, "manifest.safe")
    text = open(manifest).read()
    assert 'dmdID="products2 calibration2"' in text
    with open(manifest, "w") as fh:
        fh.write(text.replace('dmdID="products2 calibration2"', 'dmdID="products2"'))
    with pytest.raises(InputError, match="without its calibration file: the product is incomplete"):
        calibrated_raster(root, str(tmp_path / "cal"))


def test_two_calibration_vectors_on_one_line_give_the_later_one_not_nan():
    from despecknet_qgis.core.sentinel1 import lut_rows

    table = np.array([[1.0], [2.0], [3.0]])
    rows = lut_rows(np.array([0.0, 100.0, 100.0]), table, 99, 3).ravel()
    assert np.isfinite(rows).all() and rows[0] == pytest.approx(1.99) and rows[1] == rows[2] == 3.0


def test_a_sentinel1_calibration_reports_progress_and_stops_when_cancelled_leaving_no_product(tmp_path):
    # Calibration (a minute or more for a full IW GRD) neither reported progress nor checked for a cancel.
    from despecknet_qgis.core.errors import Cancelled
    from despecknet_qgis.core.progress import Progress

    root, _ = build_safe(tmp_path / "download", shape=(700, 80))  # 3 strips a polarisation
    seen = []
    calibrated_raster(root, str(tmp_path / "done"), Progress(report=seen.append))
    assert seen == sorted(seen) and len(seen) >= 6 and seen[-1] == 100.0

    checks = []
    with pytest.raises(Cancelled):
        calibrated_raster(root, str(tmp_path / "cache"), Progress(is_cancelled=lambda: checks.append(1) or len(checks) >= 2))
    assert len(checks) == 2
    assert not [n for n in os.listdir(tmp_path / "cache") if n.endswith(".tif")]


def test_despeckle_of_a_sentinel1_product_cancelled_during_calibration_stops_there(provider, tiny_model, tmp_path):
    import processing

    root, _ = build_safe(tmp_path / "download", shape=(700, 80))
    feedback = QgsProcessingFeedback()
    values = []
    feedback.progressChanged.connect(values.append)
    feedback.progressChanged.connect(lambda p: feedback.cancel() if p > 20 else None)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run("despecknet:despeckle", {"INPUT": root, "MODEL": tiny_model, "OUTPUT": str(tmp_path / "o.tif")},
                       feedback=feedback)
    assert values and max(values) < 100
    assert not os.path.exists(tmp_path / "o.tif")


def test_the_calibration_cache_is_each_users_own_and_pruning_clears_what_killed_runs_left(tmp_path):
    # One folder for every user: a second user could not despeckle any product (and would have trusted
    # files someone else wrote). A calibration killed midway left its partial file (1.7 GB a polarisation
    # for an IW GRD) and lock files in the cache forever.
    from despecknet_qgis.core.sentinel1 import default_folder, prune_calibrated

    assert os.path.basename(default_folder()).endswith(str(os.getuid()))
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    (cache / f".S1A_x_1234abcd_sigma0.partial-{dead}-0123abcd.tif").write_bytes(b"half a calibration")
    (cache / ".S1A_x_1234abcd_sigma0.tif.writing.lock").write_text("")
    (cache / ".S1A_x_1234abcd_sigma0.tif.use.lock").write_text("")
    mine = cache / f".S1A_y_5678abcd_sigma0.partial-{os.getpid()}-89abcdef.tif"  # a calibration under way here
    mine.write_bytes(b"being written")
    kept = cache / "S1A_z_9abc0123_sigma0.tif"
    kept.write_bytes(b"a calibrated product")
    prune_calibrated(str(cache), keep=str(kept))
    assert sorted(os.listdir(cache)) == sorted([mine.name, kept.name])


def test_many_calibration_vectors_sharing_lines_keep_the_later_one_of_each_pair(tmp_path):
    """np.argsort is not stable beyond 16 elements: with a real product's 20 to 30 vectors, the earlier
    vector of a pair on one line was used at that line (the README says the later one)."""
    from despecknet_qgis.core.sentinel1 import lut_rows, sigma0_lut

    vectors = "".join(f"<calibrationVector><line>{(j // 2) * 100}</line><pixel>0 9</pixel>"
                      f"<sigmaNought>{500 + j} {500 + j}</sigmaNought></calibrationVector>" for j in range(60))
    path = tmp_path / "calibration.xml"
    path.write_text(f"<calibration><calibrationVectorList>{vectors}</calibrationVectorList></calibration>")
    lines, table = sigma0_lut(str(path), 10)
    rows = lut_rows(lines, table, 0, 3000)[:, 0]
    assert [rows[k * 100] for k in range(30)] == [500 + 2 * k + 1 for k in range(30)]


def test_a_product_read_in_another_domain_than_intensity_is_refused(provider, tiny_model, safe, tmp_path):
    """A product is read as calibrated intensity; INPUT_DOMAIN decibel took sigma0 0.03 for dB (output mean 9.3),
    amplitude squared it again, and no warning was given."""
    from despecknet_qgis.core.classic_filters import classic_filter_raster
    from despecknet_qgis.core.inference import Despeckler

    root, _, zpath = safe
    vv = [n for n in sigma0_names(zpath) if ":IW_VV:" in n][0].replace(":INTENSITY", ":AMPLITUDE")
    for given in (root, zpath, vv):
        with pytest.raises(QgsProcessingException, match="Sentinel-1 product.*its domain is intensity, not decibel"):
            run("despecknet:despeckle", {"INPUT": given, "MODEL": tiny_model[0], "INPUT_DOMAIN": 2,
                                         "OUTPUT": str(tmp_path / "x.tif")})
    assert not (tmp_path / "x.tif").exists()
    with pytest.raises(InputError, match="its domain is intensity, not amplitude"):
        despeckle_raster(root, str(tmp_path / "y.tif"), Despeckler(tiny_model[0], "cpu"), domain="amplitude")
    with pytest.raises(InputError, match="its domain is intensity, not amplitude"):
        classic_filter_raster(zpath, str(tmp_path / "z.tif"), domain="amplitude")


def test_a_measurement_file_of_a_product_is_read_as_its_calibrated_polarisation(provider, tiny_model, safe, tmp_path):
    """Opening X.SAFE/measurement/*.tiff (how many open a GRD) despeckled the digital numbers as sigma0."""
    from despecknet_qgis.core.sentinel1 import resolve_input

    root, numbers, _ = safe
    vh = next(os.path.join(root, "measurement", f) for f in os.listdir(os.path.join(root, "measurement")) if "-vh-" in f)
    assert is_sentinel1_input(vh)
    ds = gdal.Open(resolve_input(vh, str(tmp_path / "cal")))
    assert ds.RasterCount == 1 and ds.GetRasterBand(1).GetDescription() == "VH"
    np.testing.assert_allclose(ds.GetRasterBand(1).ReadAsArray(), expected_sigma0(numbers["VH"]), rtol=1e-6)
    ds = None
    out = run("despecknet:despeckle", {"INPUT": vh, "MODEL": tiny_model[0], "OUTPUT": str(tmp_path / "x.tif")})["OUTPUT"]
    arrays, out_ds = read_tif(out)
    assert out_ds.GetRasterBand(1).GetDescription() == "VH" and np.nanmedian(arrays[0]) < 1.0  # sigma0, not DN
    # a measurement file copied out of its product is a plain raster
    shutil.copyfile(vh, tmp_path / "copy.tiff")
    assert not is_sentinel1_input(str(tmp_path / "copy.tiff"))


def test_a_sigma0_name_with_a_swath_the_product_lacks_is_refused(safe, tmp_path):
    root, _, _ = safe
    with pytest.raises(InputError, match="has no EW swath; its measurements are of IW"):
        calibrated_raster(f"SENTINEL1_CALIB:SIGMA0:{root}/manifest.safe:EW_VV:INTENSITY", str(tmp_path / "cal"))


def test_batch_names_outputs_after_the_product_and_finds_products_in_a_folder(safe, tmp_path):
    """Two products given by their manifest.safe both became manifest_despeckled.tif (refused as one name); a
    folder of product zips "held no raster"; a folder mixing them dropped the products silently."""
    from despecknet_qgis.batch.plan import expand_inputs, output_stem

    root, _, zpath = safe
    assert output_stem(os.path.join(root, "manifest.safe")) == os.path.basename(root)[:-5]
    name = f"SENTINEL1_CALIB:BETA0:{root}/manifest.safe:IW_VH:INTENSITY"
    assert output_stem(name) == os.path.basename(root)[:-5] + "_VH_beta0"
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copyfile(zpath, folder / os.path.basename(zpath))
    assert expand_inputs([str(folder)]) == [str(folder / os.path.basename(zpath))]
    write_tif(folder / "other.tif", speckled_scene(32)[0])
    assert len(expand_inputs([str(folder)])) == 2
