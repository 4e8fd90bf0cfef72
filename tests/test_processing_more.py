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
