"""temporallabel, train, specklestats and quality through the Processing registry, and the map tool."""
import os

import numpy as np
import pytest
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from conftest import read_tif, write_tif
from despecknet_qgis.core.metrics import enl
from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle
from despecknet_qgis.core.training import load_checkpoint

def run(alg, params):
    import processing

    return processing.run(f"despecknet:{alg}", params, feedback=QgsProcessingFeedback())


def stack(tmp_path, dates=6, size=64, seed=0):
    rng = np.random.default_rng(seed)
    x = simulate_reflectivity((size, size), rng, parcel_size=32.0).reflectivity
    return [write_tif(tmp_path / f"d{t}.tif", (x * rng.gamma(4.4, 1 / 4.4, x.shape)).astype(np.float32)) for t in range(dates)], x


def test_temporallabel(provider, tmp_path):
    paths, truth = stack(tmp_path)
    res = run("temporallabel", {"INPUTS": paths, "LOOKS": 4.4, "MULTILOOK": 3, "OUTPUT": str(tmp_path / "label.tif"),
                                "OUTPUT_MASK": str(tmp_path / "mask.tif")})
    assert 0.5 < res["STABLE_FRACTION"] <= 1.0 and res["ESTIMATED_LOOKS"] == pytest.approx(4.4)
    mask = read_tif(res["OUTPUT_MASK"])[0][0]
    assert set(np.unique(mask)) <= {0, 1} and mask.mean() == pytest.approx(res["STABLE_FRACTION"])


def test_temporallabel_mismatched_stack(provider, tmp_path):
    paths, _ = stack(tmp_path, dates=3)
    odd = write_tif(tmp_path / "odd.tif", np.ones((50, 64), np.float32))
    with pytest.raises(QgsProcessingException, match="odd.tif is 64x50"):
        run("temporallabel", {"INPUTS": paths + [odd], "OUTPUT": str(tmp_path / "label.tif")})


def test_train_counts_must_match(provider, tmp_path):
    paths, _ = stack(tmp_path, dates=3)
    with pytest.raises(QgsProcessingException, match="3 image.*1 label"):
        run("train", {"INPUT": paths, "REFERENCE": paths[:1], "OUTPUT_MODEL": str(tmp_path / "m.onnx")})


def test_train_writes_model_and_checkpoint(provider, tmp_path):
    rng = np.random.default_rng(1)
    x = simulate_reflectivity((96, 96), rng, parcel_size=32.0).reflectivity
    y = write_tif(tmp_path / "y.tif", (x * simulate_speckle(x.shape, 5.0, 0.0, rng)).astype(np.float32))
    lab = write_tif(tmp_path / "x.tif", x.astype(np.float32))
    res = run("train", {"INPUT": [y], "REFERENCE": [lab], "EPOCHS": 1, "PATCH_SIZE": 24, "STRIDE": 12, "BATCH_SIZE": 8,
                        "VALIDATION_FRACTION": 0.25, "OUTPUT_MODEL": str(tmp_path / "m.onnx")})
    assert os.path.exists(res["OUTPUT_MODEL"]) and res["OUTPUT_CHECKPOINT"] == str(tmp_path / "m.pt")
    assert load_checkpoint(res["OUTPUT_CHECKPOINT"])[1].phases[-1]["phase"] == 1
    assert np.isfinite(res["VALIDATION_LOSS"])
    out = run("despeckle", {"INPUT": y, "MODEL": res["OUTPUT_MODEL"], "OUTPUT": str(tmp_path / "xhat.tif")})
    assert os.path.exists(out["OUTPUT"])


def polygon_layer(crs, rings):
    layer = QgsVectorLayer(f"Polygon?crs={crs}", "areas", "memory")
    feats = []
    for ring in rings:
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring]]))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    return layer


def test_specklestats_reprojects_polygons_and_writes_html(provider, tmp_path):
    rng = np.random.default_rng(2)
    noisy = rng.gamma(1.0, 1.0, (100, 100)) * 2.0
    smooth = rng.gamma(25.0, 1 / 25.0, (100, 100)) * 2.0
    a = write_tif(tmp_path / "noisy.tif", noisy, epsg=32631, origin=(600000.0, 5800000.0), pixel=10.0)
    b = write_tif(tmp_path / "smooth.tif", smooth, epsg=32631, origin=(600000.0, 5800000.0), pixel=10.0)
    # The same square (pixels 20..69) given in WGS84: reprojection must land it on the same pixels.
    from qgis.core import QgsCoordinateTransform, QgsProject

    utm, wgs = QgsCoordinateReferenceSystem("EPSG:32631"), QgsCoordinateReferenceSystem("EPSG:4326")
    ct = QgsCoordinateTransform(utm, wgs, QgsProject.instance())
    corners = [(600200.0, 5799800.0), (600700.0, 5799800.0), (600700.0, 5799300.0), (600200.0, 5799300.0), (600200.0, 5799800.0)]
    ring = [(p.x(), p.y()) for p in (ct.transform(QgsPointXY(x, y)) for x, y in corners)]
    tiny = [(600000.0, 5800000.0), (600030.0, 5800000.0), (600030.0, 5799970.0), (600000.0, 5800000.0)]
    tiny_wgs = [(p.x(), p.y()) for p in (ct.transform(QgsPointXY(x, y)) for x, y in tiny)]
    res = run("specklestats", {"INPUTS": [a, b], "POLYGONS": polygon_layer("EPSG:4326", [ring, tiny_wgs]),
                               "OUTPUT": "memory:", "OUTPUT_HTML": str(tmp_path / "report.html")})
    rows = {(f["polygon"], f["raster"]): f for f in res["OUTPUT"].getFeatures()}  # processing.run returns the layer
    first = rows[(1, "noisy")]
    # Reprojected square: about 50x50 pixels (edges may gain or lose a row after reprojection).
    assert 2300 <= first["pixels"] <= 2700
    assert first["enl"] == pytest.approx(enl(noisy[20:70, 20:70]), rel=0.1)
    assert rows[(1, "smooth")]["enl"] > 10 * first["enl"]
    assert res["ENL"] == pytest.approx(first["enl"]) and res["CX"] == pytest.approx(first["cx"])
    html = open(res["OUTPUT_HTML"], encoding="utf-8").read()
    assert html.count("<svg") == 4 and "Gamma" in html and "unreliable" in html


def test_quality_with_and_without_reference(provider, tmp_path):
    rng = np.random.default_rng(3)
    x = np.exp(rng.normal(0, 1, (64, 64)))
    y = x * rng.gamma(1.0, 1.0, x.shape)
    xh = x * rng.gamma(30.0, 1 / 30.0, x.shape)
    px, py, pxh = (write_tif(tmp_path / f"{n}.tif", a) for n, a in (("x", x), ("y", y), ("xh", xh)))
    full = run("quality", {"INPUT": pxh, "NOISY": py, "REFERENCE": px, "OUTPUT_RATIO": str(tmp_path / "ratio.tif")})
    for key in ("PSNR", "SSIM", "PSNR_DB", "SSIM_DB", "DG", "EPI", "MOR", "VOR"):
        assert np.isfinite(full[key]), key
    assert full["DG"] > 0 and os.path.exists(full["OUTPUT_RATIO"])
    noref = run("quality", {"INPUT": pxh, "NOISY": py})
    assert "PSNR" not in noref and noref["MOR"] == pytest.approx(full["MOR"])
    perfect = run("quality", {"INPUT": px, "NOISY": py, "REFERENCE": px})
    assert "DG" not in perfect and perfect["EPI"] == 1.0


def test_map_tool_shows_enl_of_visible_rasters(qgis_canvas, tmp_path):
    from qgis.core import QgsProject
    from qgis.gui import QgsMapMouseEvent
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt

    from despecknet_qgis.gui.homogeneous_area_tool import LAYER_NAME, HomogeneousAreaTool

    rng = np.random.default_rng(4)
    values = rng.gamma(1.0, 1.0, (100, 100))
    path = write_tif(tmp_path / "r.tif", values, epsg=32631, origin=(0.0, 1000.0), pixel=10.0)
    layer = QgsRasterLayer(path, "r")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    qgis_canvas.setDestinationCrs(layer.crs())
    qgis_canvas.setLayers([layer])
    qgis_canvas.resize(400, 400)
    qgis_canvas.setExtent(QgsRectangle(0, 0, 1000, 1000))
    qgis_canvas.refresh()
    tool = HomogeneousAreaTool(qgis_canvas)
    qgis_canvas.setMapTool(tool)

    def click(x, y, button=Qt.LeftButton):
        event = QgsMapMouseEvent(qgis_canvas, QEvent.MouseButtonPress, QPoint(x, y), button, button, Qt.NoModifier)
        tool.canvasPressEvent(event)

    # Click the corners of the middle of the canvas, then right click to close.
    ms = qgis_canvas.mapSettings()
    to_px = lambda x, y: ms.mapToPixel().transform(QgsPointXY(x, y))  # noqa: E731
    for mx, my in ((200, 800), (800, 800), (800, 200), (200, 200)):
        p = to_px(mx, my)
        click(int(round(p.x())), int(round(p.y())))
    results = tool.finish()
    assert len(results) == 1 and results[0][0] == "r"
    st = results[0][1]
    assert 3000 < st.pixels < 4000
    assert st.enl == pytest.approx(enl(values[20:80, 20:80]), rel=0.15)
    kept = QgsProject.instance().mapLayersByName(LAYER_NAME)
    assert kept and kept[0].featureCount() == 1


def test_outputs_do_not_carry_the_inputs_statistics(provider, tiny_model, tmp_path):
    """QGIS writes STATISTICS_* beside an input it displays; every output copied them (a dB output showed a
    minimum of 0.157 and a maximum of 2.8e7), and QGIS stretched the output by them."""
    from conftest import speckled_scene
    from osgeo import gdal

    src = write_tif(tmp_path / "y.tif", speckled_scene(64, seed=3)[0])
    ds = gdal.Open(src, gdal.GA_Update)
    band = ds.GetRasterBand(1)
    band.SetMetadata({"STATISTICS_MINIMUM": "0.157", "STATISTICS_MAXIMUM": "28205922", "STATISTICS_MEAN": "22325.5",
                      "POLARISATION": "VV"})
    band = ds = None
    for alg, params in (("despeckle", {"MODEL": tiny_model[0], "OUTPUT_DOMAIN": 3, "OUTPUT_NOISE": str(tmp_path / "n.tif")}),
                        ("classicfilter", {"METHOD": 0})):
        res = run(alg, {"INPUT": src, "OUTPUT": str(tmp_path / f"{alg}.tif"), **params})
        for out in [res["OUTPUT"]] + ([res["OUTPUT_NOISE"]] if "OUTPUT_NOISE" in res else []):
            out_ds = gdal.Open(out)  # held: a band of a temporary dataset crashes GDAL
            metadata = out_ds.GetRasterBand(1).GetMetadata()
            out_ds = None
            assert metadata.get("POLARISATION") == "VV" and not any(k.startswith("STATISTICS_") for k in metadata), out


def test_an_output_read_in_another_domain_than_it_records_is_refused(provider, tiny_model, tmp_path):
    """A despecknet output records its domain; specklestats read a dB output as intensity (ENL 2435 for 24),
    quality gave MoR 467, train learned from an intensity label read as amplitude: all reported success."""
    from conftest import speckled_scene

    from despecknet_qgis.core.errors import InputError
    from despecknet_qgis.core.region_stats import region_statistics

    src = write_tif(tmp_path / "y.tif", speckled_scene(64, seed=4)[0])
    db = run("despeckle", {"INPUT": src, "MODEL": tiny_model[0], "OUTPUT_DOMAIN": 3,
                           "OUTPUT": str(tmp_path / "db.tif")})["OUTPUT"]
    with pytest.raises(QgsProcessingException, match="written in decibel.*set the input domain to decibel"):
        run("quality", {"INPUT": db, "NOISY": src})
    with pytest.raises(InputError, match="written in decibel"):
        region_statistics(db, ["POLYGON((500100 3999900, 500500 3999900, 500500 3999500, 500100 3999500, "
                               "500100 3999900))"])
    # in its own domain it is read
    assert run("classicfilter", {"INPUT": db, "INPUT_DOMAIN": 2, "METHOD": 0, "OUTPUT": str(tmp_path / "f.tif")})


def test_quality_names_the_raster_whose_values_do_not_fit_the_domain(provider, tmp_path):
    """"The input has values too large to be decibel" named no raster when the reference was at fault."""
    from conftest import speckled_scene

    from despecknet_qgis.core.errors import InputError
    from despecknet_qgis.core.quality import quality_metrics

    y = speckled_scene(64, seed=5)[0]
    db = write_tif(tmp_path / "db.tif", (10 * np.log10(y)).astype(np.float32))
    reference = write_tif(tmp_path / "ref.tif", (y * 1e4).astype(np.float32))  # intensity, not dB
    with pytest.raises(InputError, match="`reference` .*ref.tif has values too large to be decibel"):
        quality_metrics(db, db, reference, domain="decibel")


def test_despeckle_log_counts_the_pixels_of_its_extent(provider, tiny_model, tmp_path):
    """The log counted the whole band's valid pixels (0.07 Mpixel) for an 80x80 EXTENT (0.0064)."""
    import processing
    from conftest import speckled_scene

    src = write_tif(tmp_path / "y.tif", speckled_scene(96, seed=6)[0])
    messages = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802 - QGIS API
            messages.append(info)
            super().pushInfo(info)

    processing.run("despecknet:despeckle", {"INPUT": src, "MODEL": tiny_model[0], "OUTPUT": str(tmp_path / "x.tif"),
                                            "EXTENT": "500200,500800,3998800,3999400 [EPSG:32633]"},
                   feedback=Feedback())
    assert read_tif(tmp_path / "x.tif")[0][0].shape == (30, 30)
    assert any("0.0009 Mpixel" in m for m in messages), [m for m in messages if "Mpixel" in m]
