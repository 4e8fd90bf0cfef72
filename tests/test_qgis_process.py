"""The real qgis_process binary, in a subprocess, with a private profile and plugin path."""
import json
import os

import numpy as np
import pytest
from osgeo import gdal

from conftest import read_tif, run_qgis_process, speckled_scene, write_tif
from despecknet_qgis.core.tiled_predict import despeckle_raster


def parse_json(stdout):
    return json.loads(stdout[stdout.index("{"):])


def test_despeckle_headless_keeps_georeferencing_nodata_and_values(profile, tiny_model, despeckler, tmp_path):
    y, _ = speckled_scene(90, seed=30)
    y[:, :6] = 0.0
    src = write_tif(tmp_path / "in.tif", y, nodata=0.0, epsg=32631, origin=(612000.0, 5801000.0), pixel=10.0)
    out, noise = tmp_path / "out.tif", tmp_path / "noise.tif"
    proc = run_qgis_process("--json", "run", "despecknet:despeckle", "--", f"INPUT={src}", "INPUT_DOMAIN=0",
                            f"MODEL={tiny_model[0]}", "DEVICE=0", "TILE_SIZE=64", f"OUTPUT={out}",
                            f"OUTPUT_NOISE={noise}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = parse_json(proc.stdout)["results"]
    assert results["PROVIDER"] == "CPUExecutionProvider"
    assert results["OUTPUT"] == str(out) and results["OUTPUT_NOISE"] == str(noise)

    (x,), ds = read_tif(out)
    ds_in = gdal.Open(src)
    assert ds.GetGeoTransform() == ds_in.GetGeoTransform() == (612000.0, 10.0, 0.0, 5801000.0, 0.0, -10.0)
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32631"
    assert ds.GetRasterBand(1).GetNoDataValue() == 0.0
    assert (x[:, :6] == 0.0).all() and (x[:, 6:] > 0).all()
    # Same numbers as the core called directly with the same model.
    despeckle_raster(src, str(tmp_path / "direct.tif"), despeckler, tile_size=256)
    np.testing.assert_allclose(x, read_tif(tmp_path / "direct.tif")[0][0], rtol=1e-5)


def test_bad_input_exits_with_a_clear_error(profile, tiny_model, tmp_path):
    y, _ = speckled_scene(64, seed=31)
    y[0, 0] = -3.0
    src = write_tif(tmp_path / "neg.tif", y)
    out = tmp_path / "out.tif"
    proc = run_qgis_process("run", "despecknet:despeckle", "--", f"INPUT={src}", f"MODEL={tiny_model[0]}",
                            f"OUTPUT={out}", profile=profile)
    assert proc.returncode == 1
    assert "negative values" in proc.stdout + proc.stderr
    assert not out.exists()


def test_label_train_finetune_stats_quality_headless(profile, tiny_model, tmp_path):
    """One qgis_process run of every other algorithm, chained as a user would."""
    from despecknet_qgis.core.simulate import simulate_reflectivity

    rng = np.random.default_rng(32)
    x = simulate_reflectivity((96, 96), rng, parcel_size=32.0).reflectivity
    dates = [write_tif(tmp_path / f"d{t}.tif", (x * rng.gamma(4.4, 1 / 4.4, x.shape)).astype(np.float32)) for t in range(5)]
    label, mask = tmp_path / "label.tif", tmp_path / "mask.tif"
    proc = run_qgis_process("--json", "run", "despecknet:temporallabel", "--", *[f"INPUTS={d}" for d in dates],
                            "LOOKS=4.4", f"OUTPUT={label}", f"OUTPUT_MASK={mask}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 0.5 < parse_json(proc.stdout)["results"]["STABLE_FRACTION"] <= 1.0

    model = tmp_path / "m.onnx"
    proc = run_qgis_process("--json", "run", "despecknet:train", "--", f"INPUT={dates[0]}", f"REFERENCE={label}",
                            "EPOCHS=1", "PATCH_SIZE=24", "STRIDE=12", "BATCH_SIZE=8", f"OUTPUT_MODEL={model}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = parse_json(proc.stdout)["results"]["OUTPUT_CHECKPOINT"]
    assert model.exists() and os.path.exists(ckpt)
    # The model trained from the temporal label despeckles through despecknet:despeckle.
    from_label = tmp_path / "from_label.tif"
    proc = run_qgis_process("--json", "run", "despecknet:despeckle", "--", f"INPUT={dates[2]}", f"MODEL={model}",
                            f"OUTPUT={from_label}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert np.isfinite(read_tif(from_label)[0][0]).all()

    tuned, out = tmp_path / "tuned.onnx", tmp_path / "x.tif"
    proc = run_qgis_process("--json", "run", "despecknet:finetune", "--", f"INPUT={dates[1]}", f"MODEL={ckpt}",
                            "PRESET=1", "PATCH_SIZE=24", "BATCH_SIZE=8", f"OUTPUT_MODEL={tuned}", f"OUTPUT={out}",
                            profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse_json(proc.stdout)["results"]["PROVIDER"] == "CPUExecutionProvider" and tuned.exists() and out.exists()

    square = tmp_path / "square.geojson"
    square.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                      "geometry": {"type": "Polygon", "coordinates": [[[500200, 3999200], [500800, 3999200], [500800, 3998600],
                                                                        [500200, 3998600], [500200, 3999200]]]}}],
                      "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}}))
    proc = run_qgis_process("--json", "run", "despecknet:specklestats", "--", f"INPUTS={dates[1]}", f"INPUTS={out}",
                            f"POLYGONS={square}", f"OUTPUT={tmp_path / 'stats.csv'}", f"OUTPUT_HTML={tmp_path / 'r.html'}",
                            profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = parse_json(proc.stdout)["results"]
    assert results["ENL"] > 0 and results["CX"] > 0 and os.path.exists(results["OUTPUT_HTML"])

    proc = run_qgis_process("--json", "run", "despecknet:quality", "--", f"INPUT={out}", f"NOISY={dates[1]}",
                            f"REFERENCE={label}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    q = parse_json(proc.stdout)["results"]
    for key in ("PSNR", "SSIM", "PSNR_DB", "SSIM_DB", "DG", "EPI", "MOR", "VOR"):
        assert isinstance(q[key], float), key
