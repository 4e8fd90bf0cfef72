"""`make package` builds a zip the official plugin repository accepts and QGIS can load."""
import configparser
import os
import zipfile

import pytest

from conftest import ROOT
from tools.package import MAX_BYTES, build, validate


def test_package_passes_the_repository_rules(tmp_path):
    zip_path = build(str(tmp_path / "despecknet_qgis.zip"))
    meta = validate(zip_path)
    assert meta["hasProcessingProvider"] == "yes"
    assert meta["qgisMinimumVersion"] == "3.22"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert "despecknet_qgis/models/despecknet.onnx" in names
        assert "despecknet_qgis/LICENSE" in names and "GNU GENERAL PUBLIC LICENSE" in zf.read("despecknet_qgis/LICENSE").decode()
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert not any(n.startswith("despecknet_qgis/tests") for n in names)
    assert os.path.getsize(zip_path) < MAX_BYTES


SAMPLE = ("despecknet_qgis/examples/sample/sample_scene.tif", "despecknet_qgis/examples/sample/sample_homogeneous.geojson")
MODELS = tuple(f"despecknet_qgis/examples/models/{n}.model3"
               for n in ("despeckle_stats", "label_train_despeckle", "finetune_despeckle_folder"))


def test_package_holds_the_sample_scene_polygon_and_example_models(tmp_path):
    """`make package` ships a small sample (under 1 MB) and the .model3 examples; links resolved, no GDAL sidecars."""
    from osgeo import gdal, ogr

    sidecar = os.path.join(ROOT, "despecknet_qgis", "examples", "sample", "sample_scene.tif.aux.xml")
    made_sidecar = not os.path.exists(sidecar)
    if made_sidecar:  # what opening the sample in QGIS leaves beside it: it must not travel
        with open(sidecar, "w") as fh:
            fh.write("<PAMDataset/>")
    try:
        zip_path = build(str(tmp_path / "despecknet_qgis.zip"))
    finally:
        if made_sidecar:
            os.remove(sidecar)
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        for name in SAMPLE + MODELS:
            assert name in names, name
        assert not any(n.endswith(".aux.xml") for n in names)
        assert sum(zf.getinfo(n).file_size for n in SAMPLE) < 1_000_000
        zf.extractall(tmp_path / "unzipped")
    scene = gdal.Open(str(tmp_path / "unzipped" / SAMPLE[0]))
    assert (scene.RasterXSize, scene.RasterYSize, scene.RasterCount) == (512, 512, 1)
    assert scene.GetSpatialRef().GetAuthorityCode(None) == "32631"
    source = ogr.Open(str(tmp_path / "unzipped" / SAMPLE[1]))  # held: its layer dies with it
    polygons = source.GetLayer(0)
    assert polygons.GetFeatureCount() == 1 and polygons.GetGeomType() == ogr.wkbPolygon
    left, right, bottom, top = polygons.GetExtent()
    x0, dx, _, y0, _, dy = scene.GetGeoTransform()
    assert x0 < left < right < x0 + 512 * dx and y0 + 512 * dy < bottom < top < y0  # the polygon lies on the scene


def test_validator_rejects_a_zip_without_license(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("despecknet_qgis/__init__.py", "")
        zf.write(os.path.join(ROOT, "metadata.txt"), "despecknet_qgis/metadata.txt")
    with pytest.raises(ValueError, match="LICENSE"):
        validate(str(bad))


def test_metadata_has_every_required_field():
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read(os.path.join(ROOT, "metadata.txt"))
    meta = dict(parser.items("general"))
    for key in ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker", "repository"):
        assert meta.get(key), key


def test_unzipped_package_loads_in_qgis_process(tmp_path):
    from conftest import run_qgis_process

    zip_path = build(str(tmp_path / "despecknet_qgis.zip"))
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(plugins)
    ini = tmp_path / "profile" / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\ndespecknet_qgis=true\n")
    os.environ["DESPECKNET_QGIS_PLUGINPATH"] = str(plugins)
    try:
        proc = run_qgis_process("list", profile=tmp_path / "profile")
    finally:
        os.environ.pop("DESPECKNET_QGIS_PLUGINPATH")
    assert proc.returncode == 0, proc.stderr
    for alg in ("despeckle", "temporallabel", "train", "finetune", "specklestats", "quality",
                "despeckle_stats", "label_train_despeckle", "finetune_despeckle_folder"):  # the last three: models
        assert f"despecknet:{alg}" in proc.stdout


def test_pyproject_version_is_the_plugin_version():
    import tomllib

    from despecknet_qgis.core.model_info import plugin_version

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["version"] == plugin_version()
    assert project["scripts"]["despecknet-batch"] == "despecknet_qgis.batch.cli:main"


def test_batch_console_script_runs_a_scene(tiny_model, tmp_path):
    """`make setup` installs the package: `despecknet-batch` is the batch entry point's console script."""
    import subprocess
    import sys

    from conftest import speckled_scene, write_tif

    script = os.path.join(os.path.dirname(sys.executable), "despecknet-batch")
    assert os.access(script, os.X_OK), "run `make setup`: it installs the console script"
    src = write_tif(tmp_path / "a.tif", speckled_scene(64)[0])
    proc = subprocess.run([script, src, "--output-dir", str(tmp_path / "out"), "--model", tiny_model[0],
                           "--workers", "1"], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "1 despeckled, 0 up to date, 0 failed" in proc.stdout
    assert os.path.isfile(tmp_path / "out" / "a_despeckled.tif")
