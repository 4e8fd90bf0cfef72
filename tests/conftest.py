"""Shared fixtures: a real (untrained, BN-calibrated) deSpeckNet exported to ONNX, and GeoTIFF helpers."""
import os
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

QGIS_PROCESS = os.path.join(ROOT, "tools", "qgis_process")


def write_tif(path, bands, nodata=None, epsg=32633, origin=(500000.0, 4000000.0), pixel=20.0, dtype=gdal.GDT_Float32):
    """Write a GeoTIFF from a 2-D array or a list of 2-D arrays."""
    from despecknet_qgis.core.raster import write_raster

    return write_raster(path, bands, (origin[0], pixel, 0.0, origin[1], 0.0, -pixel), epsg, nodata, dtype)


def read_tif(path):
    ds = gdal.Open(str(path))
    arrays = [ds.GetRasterBand(i + 1).ReadAsArray().astype(np.float64) for i in range(ds.RasterCount)]
    return arrays, ds


def speckled_scene(size=96, looks=1.0, correlation=0.0, seed=0):
    from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle

    rng = np.random.default_rng(seed)
    scene = simulate_reflectivity((size, size), rng, parcel_size=32.0)
    return scene.reflectivity * simulate_speckle((size, size), looks, correlation, rng), scene


def export_tiny_model(path, seed=0, version="test"):
    """The full deSpeckNet architecture, random weights (from `seed`), BatchNorm statistics from a few
    batches: ONNX at `path`, checkpoint beside it. Returns (path, model)."""
    import torch

    from despecknet_qgis.core.model import DeSpeckNet
    from despecknet_qgis.core.export import export_onnx
    from despecknet_qgis.core.training import TrainingRecord, save_checkpoint

    torch.manual_seed(seed)
    model = DeSpeckNet()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 1, 40, 40))
    model.eval()
    export_onnx(model, str(path), TrainingRecord(), version)
    save_checkpoint(str(path.with_suffix(".pt")), model, TrainingRecord())
    return str(path), model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The full deSpeckNet architecture, random weights, BatchNorm statistics from a few batches."""
    return export_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="session")
def despeckler(tiny_model):
    from despecknet_qgis.core.inference import Despeckler

    return Despeckler(tiny_model[0], "cpu")


_PROVIDERS = []  # QGIS drops a provider's algorithms once Python lets go of the provider


@pytest.fixture()
def provider(qgis_processing):
    """The despecknet provider in the Processing registry of the pytest-qgis application."""
    from qgis.core import QgsApplication

    from despecknet_qgis.provider import DespeckNetProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("despecknet") is None:
        _PROVIDERS.append(DespeckNetProvider())
        assert registry.addProvider(_PROVIDERS[-1])
    return registry.providerById("despecknet")


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """An isolated QGIS profile with only this plugin staged and enabled, for qgis_process."""
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


def qgis_process_command(*args, profile=None):
    """The command line and environment of a qgis_process run (for runs started in the background)."""
    env = dict(os.environ)
    if profile:
        env["DESPECKNET_QGIS_PROFILE"] = str(profile)
    return [QGIS_PROCESS, *args], env


def run_qgis_process(*args, profile=None, timeout=300):
    env = dict(os.environ)
    if profile:
        env["DESPECKNET_QGIS_PROFILE"] = str(profile)
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, env=env, timeout=timeout)
