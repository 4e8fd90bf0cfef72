"""The ENL / Cx map tool compares layers of different bands and domains on one polygon (issue 10)."""
import numpy as np
import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsExpressionContextUtils, QgsGeometry, QgsPointXY, QgsRasterLayer

from conftest import speckled_scene, write_tif


def test_each_layer_is_measured_in_its_own_band_and_domain(qgis_app, tmp_path):
    from despecknet_qgis.core.inference import Despeckler
    from despecknet_qgis.core.tiled_predict import despeckle_raster
    from despecknet_qgis.gui.homogeneous_area_tool import stats_for_visible_rasters

    rng = np.random.default_rng(8)
    field = np.full((120, 120), 0.05)
    intensity = field * rng.gamma(1.0, 1.0, field.shape)
    kw = dict(epsg=32631, origin=(0.0, 1200.0), pixel=10.0)
    # a noisy amplitude layer whose band 2 is the one to measure, and a despeckled dB output of its intensity
    noisy = QgsRasterLayer(write_tif(tmp_path / "amp.tif", [speckled_scene(120)[0], np.sqrt(intensity)], **kw), "noisy")
    QgsExpressionContextUtils.setLayerVariable(noisy, "despecknet_band", 2)
    QgsExpressionContextUtils.setLayerVariable(noisy, "despecknet_domain", "amplitude")
    src = write_tif(tmp_path / "i.tif", intensity, **kw)
    despeckle_raster(src, str(tmp_path / "db.tif"), Despeckler(None, "cpu"), output_domain="decibel")  # bundled
    despeckled = QgsRasterLayer(str(tmp_path / "db.tif"), "despeckled")
    square = QgsGeometry.fromPolygonXY([[QgsPointXY(200, 1000), QgsPointXY(1000, 1000), QgsPointXY(1000, 200),
                                         QgsPointXY(200, 200)]])
    # the toolbar says band 1, intensity: neither layer follows it
    results = dict(stats_for_visible_rasters(square, QgsCoordinateReferenceSystem("EPSG:32631"),
                                             [noisy, despeckled], "intensity", band=1))
    assert results["noisy"].mean == pytest.approx(intensity[20:100, 20:100].mean(), rel=1e-6)
    assert results["noisy"].enl == pytest.approx(1.0, rel=0.15)
    # read as dB (its recorded domain), the despeckled field is at the same level and much smoother
    assert results["despeckled"].mean == pytest.approx(0.05, rel=0.1)
    assert results["despeckled"].enl > 5 * results["noisy"].enl


def test_specklestats_reports_every_band_with_the_polygons(provider, tmp_path):
    import processing
    from qgis.core import QgsFeature, QgsProcessingFeedback, QgsVectorLayer

    rng = np.random.default_rng(9)
    vv, vh = rng.gamma(1.0, 1.0, (100, 100)), 0.2 * rng.gamma(4.0, 0.25, (100, 100))
    raster = write_tif(tmp_path / "s1.tif", [vv, vh], epsg=32631, origin=(600000.0, 5800000.0), pixel=10.0)
    layer = QgsVectorLayer("Polygon?crs=EPSG:32631&field=site:string", "areas", "memory")
    feature = QgsFeature(layer.fields())
    ring = [(600200.0, 5799800.0), (600700.0, 5799800.0), (600700.0, 5799300.0), (600200.0, 5799300.0)]
    feature.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring]]))
    feature.setAttributes(["field"])
    layer.dataProvider().addFeatures([feature])
    result = processing.run("despecknet:specklestats", {"INPUTS": [raster], "POLYGONS": layer, "BAND": 0,
                                                        "OUTPUT": "memory:", "OUTPUT_HTML": ""},
                            feedback=QgsProcessingFeedback())
    rows = sorted(result["OUTPUT"].getFeatures(), key=lambda f: f["band"])
    assert [r["band"] for r in rows] == [1, 2] and all(r["site"] == "field" for r in rows)
    assert rows[0]["enl"] == pytest.approx(1.0, rel=0.15) and rows[1]["enl"] == pytest.approx(4.0, rel=0.15)
    assert rows[1]["mean"] == pytest.approx(0.2, rel=0.05)
    # the polygons come with their statistics, to be mapped beside the rasters
    assert result["OUTPUT"].crs().authid() == "EPSG:32631"
    assert rows[0].geometry().area() == pytest.approx(500.0 * 500.0)


def test_drawn_polygons_are_kept_in_the_scratch_layer_s_crs_and_a_removed_layer_is_made_again(qgis_iface):
    """After Project > New (or the layer removed) every polygon raised 'wrapped C/C++ object ... deleted';
    after the canvas CRS changed, polygons were stored untransformed, about 1,200 km away."""
    from qgis.core import QgsCoordinateTransform, QgsProject

    from despecknet_qgis.gui.homogeneous_area_tool import LAYER_NAME, HomogeneousAreaTool

    canvas = qgis_iface.mapCanvas()
    utm, web = QgsCoordinateReferenceSystem("EPSG:32633"), QgsCoordinateReferenceSystem("EPSG:3857")
    square = [QgsPointXY(500000, 4000000), QgsPointXY(500260, 4000000), QgsPointXY(500260, 3999740),
              QgsPointXY(500000, 3999740)]
    tool = HomogeneousAreaTool(canvas)
    project = QgsProject.instance()
    try:
        canvas.setDestinationCrs(utm)
        tool.points = list(square)
        tool.finish()
        first = tool.layer
        assert first.crs() == utm and first.featureCount() == 1
        project.removeMapLayer(first.id())  # deleted with the project's layers
        tool.points = list(square)
        tool.finish()
        assert tool.layer.name() == LAYER_NAME and tool.layer.featureCount() == 1
        canvas.setDestinationCrs(web)
        to_web = QgsCoordinateTransform(utm, web, project)
        tool.points = [to_web.transform(p) for p in square]
        tool.finish()
        kept = [f.geometry().centroid().asPoint() for f in tool.layer.getFeatures()]
        assert len(kept) == 2 and abs(kept[1].x() - kept[0].x()) < 1 and abs(kept[1].y() - kept[0].y()) < 1
    finally:
        if tool.layer is not None:
            project.removeMapLayer(tool.layer.id())
        canvas.setDestinationCrs(utm)
