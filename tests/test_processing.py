"""despecknet:despeckle through the Processing registry (pytest-qgis, real QGIS)."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback

from conftest import read_tif, speckled_scene, write_tif
from despecknet_qgis.core.inference import bundled_model_path


def despeckle(params, feedback=None):
    import processing

    return processing.run("despecknet:despeckle", params, feedback=feedback or QgsProcessingFeedback())


def test_provider_lists_despeckle_with_documented_parameters(provider):
    alg = QgsApplication.processingRegistry().algorithmById("despecknet:despeckle")
    assert alg is not None
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names == ["INPUT", "BAND", "INPUT_DOMAIN", "MODEL", "DEVICE", "PRECISION", "SELF_ENSEMBLE", "TILE_SIZE", "OVERLAP", "POINT_TARGETS", "LOOKS",
                     "ZERO_IS_NODATA", "OUTPUT_DOMAIN", "OUTPUT_TYPE", "EXTENT", "OUTPUT", "OUTPUT_NOISE"]
    assert "PROVIDER" in [o.name() for o in alg.outputDefinitions()]
    assert alg.shortHelpString()


def test_despeckle_looks_parameter_is_used_for_every_band(provider, tiny_model, tmp_path):
    """The warning for a band whose looks cannot be estimated said "give `looks`", which the algorithm had
    no parameter for."""
    from osgeo import gdal

    y, _ = speckled_scene(64, seed=12)
    src = write_tif(tmp_path / "y.tif", y)
    out = tmp_path / "x.tif"
    despeckle({"INPUT": src, "MODEL": tiny_model[0], "LOOKS": 4.4, "OUTPUT": str(out)})
    assert gdal.Open(str(out)).GetRasterBand(1).GetMetadataItem("DESPECKNET_LOOKS") == "4.40"


def test_despeckle_runs_and_reports_the_provider(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(80, seed=11)
    src = write_tif(tmp_path / "y.tif", [y, 2 * y], nodata=-1.0)
    feedback = QgsProcessingFeedback()
    progress = []
    feedback.progressChanged.connect(progress.append)
    res = despeckle(
        {"INPUT": src, "BAND": [2], "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": str(tmp_path / "x.tif"),
         "OUTPUT_NOISE": str(tmp_path / "n.tif")},
        feedback,
    )
    assert res["PROVIDER"] == "CPUExecutionProvider"
    assert os.path.exists(res["OUTPUT"]) and os.path.exists(res["OUTPUT_NOISE"])
    (x,), ds = read_tif(res["OUTPUT"])
    assert ds.RasterCount == 1 and ds.GetRasterBand(1).GetNoDataValue() == -1.0
    assert progress and progress[-1] == 100.0
    # Band 2 is 2*y: the result is twice band 1's.
    res1 = despeckle({"INPUT": src, "BAND": [1], "MODEL": tiny_model[0], "OUTPUT": str(tmp_path / "x1.tif")})
    np.testing.assert_allclose(x, 2 * read_tif(res1["OUTPUT"])[0][0], rtol=1e-5)


def test_empty_model_means_the_bundled_model(provider, tmp_path):
    y, _ = speckled_scene(64, seed=12)
    res = despeckle({"INPUT": write_tif(tmp_path / "y.tif", y), "OUTPUT": str(tmp_path / "x.tif")})
    assert os.path.exists(res["OUTPUT"]) and os.path.isfile(bundled_model_path())


def test_empty_model_gives_a_multilook_band_the_multilook_model_and_says_so(provider, tmp_path):
    """The bundled pair through Processing: a 5-look band gets the multi-look model, a 1-look band the
    general one; the log names each band's model and the output's metadata both."""
    from osgeo import gdal

    one, _ = speckled_scene(192, looks=1.0, seed=3)
    five, _ = speckled_scene(192, looks=5.0, seed=4)
    feedback = QgsProcessingFeedback()
    res = despeckle({"INPUT": write_tif(tmp_path / "y.tif", [one, five]), "OUTPUT": str(tmp_path / "x.tif")}, feedback)
    assert gdal.Open(res["OUTPUT"]).GetMetadataItem("DESPECKNET_MODEL") == "despecknet.onnx, despecknet_multilook.onnx"
    log = feedback.textLog()
    assert "band 1: equivalent number of looks" in log and "model despecknet.onnx" in log
    assert "model despecknet_multilook.onnx" in log


def test_cancel_through_feedback(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(128, seed=13)
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda p: p > 10 and feedback.cancel())
    dst = tmp_path / "x.tif"
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        despeckle({"INPUT": write_tif(tmp_path / "y.tif", y), "MODEL": tiny_model[0], "TILE_SIZE": 64,
                   "OUTPUT": str(dst)}, feedback)
    assert not dst.exists()


# --- bad input: a clear QgsProcessingException and no finished-looking output -----------------


def expect_error(params, pattern, tmp_path):
    out = params.setdefault("OUTPUT", str(tmp_path / "out.tif"))
    with pytest.raises(QgsProcessingException, match=pattern):
        despeckle(params)
    assert not os.path.exists(out) or out == params.get("INPUT")
    assert [p for p in os.listdir(os.path.dirname(out)) if "partial" in p] == []


def test_not_a_raster(provider, tiny_model, tmp_path):
    bogus = tmp_path / "notes.tif"
    bogus.write_text("this is not an image")
    expect_error({"INPUT": str(bogus), "MODEL": tiny_model[0]}, "not a readable raster", tmp_path)


def test_missing_file(provider, tiny_model, tmp_path):
    expect_error({"INPUT": str(tmp_path / "nope.tif"), "MODEL": tiny_model[0]}, "nope.tif does not exist", tmp_path)


def test_negative_values_in_intensity(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(64, seed=14)
    y[3, 3] = -0.5
    expect_error({"INPUT": write_tif(tmp_path / "y.tif", y), "MODEL": tiny_model[0]}, "negative values.*decibel", tmp_path)


def test_nan_values_without_nodata(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(64, seed=15)
    y[3, 3] = np.nan
    expect_error({"INPUT": write_tif(tmp_path / "y.tif", y), "MODEL": tiny_model[0]}, "NaN", tmp_path)


def test_all_nodata_band(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(64, seed=16)
    src = write_tif(tmp_path / "y.tif", [y, np.full_like(y, -9999.0)], nodata=-9999.0)
    expect_error({"INPUT": src, "MODEL": tiny_model[0]}, "band 2 has no valid pixel", tmp_path)


def test_raster_smaller_than_receptive_field(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(96, seed=17)
    expect_error({"INPUT": write_tif(tmp_path / "y.tif", y[:20, :30]), "MODEL": tiny_model[0]}, "receptive field", tmp_path)


def test_model_that_is_not_onnx(provider, tmp_path):
    y, _ = speckled_scene(64, seed=18)
    fake = tmp_path / "model.onnx"
    fake.write_bytes(os.urandom(2048))
    expect_error({"INPUT": write_tif(tmp_path / "y.tif", y), "MODEL": str(fake)}, "not a loadable ONNX model", tmp_path)


def test_onnx_model_that_is_not_despecknet(provider, tmp_path):
    y, _ = speckled_scene(64, seed=19)
    node = helper.make_node("Identity", ["y"], ["clean"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None])],
                              [helper.make_tensor_value_info("clean", TensorProto.FLOAT, [1, 1, None, None])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    expect_error({"INPUT": write_tif(tmp_path / "y.tif", y), "MODEL": str(path)}, "not a deSpeckNet ONNX model", tmp_path)


def test_cuda_without_gpu_fails_instead_of_falling_back(provider, tiny_model, tmp_path):
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA GPU")
    y, _ = speckled_scene(64, seed=20)
    expect_error({"INPUT": write_tif(tmp_path / "y.tif", y), "MODEL": tiny_model[0], "DEVICE": 2}, "DEVICE=cuda", tmp_path)


def test_output_equal_to_input(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(64, seed=21)
    src = write_tif(tmp_path / "y.tif", y)
    before = open(src, "rb").read()
    expect_error({"INPUT": src, "MODEL": tiny_model[0], "OUTPUT": src}, "OUTPUT .* is the input INPUT", tmp_path)
    assert open(src, "rb").read() == before


def test_point_targets_keep_their_measured_value_unless_switched_off(provider, tmp_path):
    """POINT_TARGETS (default on) puts Y back at bright scatterers the bundled network shrinks."""
    from despecknet_qgis.core.simulate import observe, simulate_reflectivity

    rng = np.random.default_rng(12)
    scene = simulate_reflectivity((160, 160), rng, realistic=True)
    y, _ = observe(scene.reflectivity, scene.targets, 1.0, 0.0, rng)
    src = write_tif(tmp_path / "y.tif", y)
    despeckle({"INPUT": src, "DEVICE": 1, "OUTPUT": str(tmp_path / "kept.tif")})
    despeckle({"INPUT": src, "DEVICE": 1, "POINT_TARGETS": False, "OUTPUT": str(tmp_path / "plain.tif")})
    kept, plain = read_tif(tmp_path / "kept.tif")[0][0], read_tif(tmp_path / "plain.tif")[0][0]
    changed = kept != plain
    assert 0 < changed.sum() < 0.01 * y.size
    assert np.allclose(kept[changed], y[changed], rtol=1e-6) and np.all(kept[changed] > plain[changed])


def test_despeckle_precision_is_chosen_by_name_and_reported(provider, tiny_model, tmp_path):
    from despecknet_qgis.core.bf16 import unavailable_reason

    y, _ = speckled_scene(80, seed=14)
    src = write_tif(tmp_path / "y.tif", y)
    forced = despeckle({"INPUT": src, "MODEL": tiny_model[0], "PRECISION": "fp32", "OUTPUT": str(tmp_path / "a.tif")})
    assert forced["PRECISION"] == "fp32"
    auto = despeckle({"INPUT": src, "MODEL": tiny_model[0], "OUTPUT": str(tmp_path / "b.tif")})
    reason = unavailable_reason()
    assert auto["PRECISION"] == ("fp32" if reason else "bf16")
    assert read_tif(auto["OUTPUT"])[1].GetMetadataItem("DESPECKNET_PRECISION") == auto["PRECISION"]
    if reason:
        with pytest.raises(QgsProcessingException, match="PRECISION.*bf16 was asked for"):
            despeckle({"INPUT": src, "MODEL": tiny_model[0], "PRECISION": "bf16", "OUTPUT": str(tmp_path / "c.tif")})
        assert not os.path.exists(tmp_path / "c.tif")


def test_despeckle_self_ensemble_is_recorded_in_the_output(provider, tiny_model, tmp_path):
    y, _ = speckled_scene(80, seed=15)
    src = write_tif(tmp_path / "y.tif", y)
    plain = despeckle({"INPUT": src, "MODEL": tiny_model[0], "OUTPUT": str(tmp_path / "a.tif")})
    mean = despeckle({"INPUT": src, "MODEL": tiny_model[0], "SELF_ENSEMBLE": True, "OUTPUT": str(tmp_path / "b.tif")})
    (a,), ds_a = read_tif(plain["OUTPUT"])
    (b,), ds_b = read_tif(mean["OUTPUT"])
    assert ds_a.GetMetadataItem("DESPECKNET_SELF_ENSEMBLE") == "off"
    assert ds_b.GetMetadataItem("DESPECKNET_SELF_ENSEMBLE") == "4 mirrored passes"
    assert np.isfinite(b).all() and not np.allclose(a, b)


@pytest.mark.parametrize("extension", ["sdat", "bil", "ers", "kro"])
def test_no_output_is_reported_written_in_a_format_kept_in_sidecar_files(provider, tiny_model, tmp_path, extension):
    """SAGA, ENVI-style, ERS and KRO outputs were reported written but could not be opened, or lost their CRS."""
    src = write_tif(tmp_path / "y.tif", speckled_scene(64, seed=5)[0])
    out = str(tmp_path / f"out.{extension}")
    expect_error({"INPUT": src, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": out}, r"OUTPUT .*GeoTIFF only", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["y.tif"]
    assert provider.supportedOutputRasterLayerExtensions() == ["tif", "tiff"]


def test_a_folder_whose_name_holds_a_pipe_is_a_folder(provider, tmp_path):
    """The path was cut at the "|" as QGIS's layer options are: the output was refused as "the input" (both
    cut to the same folder name)."""
    import processing

    folder = tmp_path / "a|b"
    folder.mkdir()
    src = write_tif(folder / "in.tif", speckled_scene(48, seed=7)[0].astype(np.float32))
    out = processing.run("despecknet:despeckle", {"INPUT": src, "OUTPUT": str(folder / "out.tif")})["OUTPUT"]
    assert out == str(folder / "out.tif") and np.isfinite(read_tif(out)[0][0]).all()


def test_cnn_averages_the_points_both_images_measure(provider, tmp_path):
    """One point over nodata made both C_NN outputs empty (NaN means), and the two means could come from
    different points."""
    import json

    import processing

    from despecknet_qgis.core.metrics import c_nn

    x = np.full((64, 64), 0.05)
    x[30, 30] = 5.0
    xh = x * 1.1
    for a in (x, xh):
        a[:8] = -9999.0
    paths = [write_tif(tmp_path / f"{n}.tif", a.astype(np.float32), nodata=-9999.0) for n, a in (("x", x), ("xh", xh))]
    points = tmp_path / "points.geojson"
    coords = [[500000 + 30.5 * 20, 4000000 - 30.5 * 20], [500000 + 20.5 * 20, 4000000 - 3.5 * 20]]  # target, nodata
    points.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": c}}
                     for c in coords]}))
    result = processing.run("despecknet:quality", {"INPUT": paths[1], "NOISY": paths[0], "REFERENCE": paths[0],
                                                   "POINTS": str(points)})
    assert result["CNN"] == pytest.approx(c_nn(xh, 30, 30), abs=1e-4)
    assert result["CNN_REFERENCE"] == pytest.approx(c_nn(x, 30, 30), abs=1e-4)
