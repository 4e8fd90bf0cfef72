"""The real qgis_process binary, in a subprocess, with a private profile and plugin path."""
import json
import os

import numpy as np
import pytest
from osgeo import gdal

from conftest import ROOT, read_tif, run_qgis_process, speckled_scene, write_tif
from despecknet_qgis.core.tiled_predict import despeckle_raster


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """An isolated QGIS profile with only this plugin staged and enabled."""
    base = tmp_path_factory.mktemp("qgis")
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "despecknet_qgis").symlink_to(os.path.join(ROOT, "despecknet_qgis"))
    ini = base / "profile" / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\ndespecknet_qgis=true\n")
    os.environ["DESPECKNET_QGIS_PLUGINPATH"] = str(plugins)
    yield base / "profile"
    os.environ.pop("DESPECKNET_QGIS_PLUGINPATH", None)


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
