"""Any GDAL dataset name is a valid input: /vsizip/, VRT (real files, real QGIS, real ONNX Runtime)."""
import os
import zipfile

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from conftest import read_tif, speckled_scene, write_tif
from despecknet_qgis.core.errors import DespeckNetError
from despecknet_qgis.core.files import same_file
from despecknet_qgis.core.tiled_predict import despeckle_raster


def despeckle(params):
    import processing

    return processing.run("despecknet:despeckle", params, feedback=QgsProcessingFeedback())


@pytest.fixture()
def zipped(tmp_path):
    y, _ = speckled_scene(64, seed=31)
    src = write_tif(tmp_path / "y.tif", y)
    zpath = tmp_path / "product.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(src, "inner/y.tif")
    return src, f"/vsizip/{zpath}/inner/y.tif", str(zpath)


def test_vsizip_input_through_processing_equals_plain_file(provider, tiny_model, zipped, tmp_path):
    plain, name, _ = zipped
    despeckle({"INPUT": plain, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": str(tmp_path / "a.tif")})
    despeckle({"INPUT": name, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": str(tmp_path / "b.tif")})
    a, b = read_tif(tmp_path / "a.tif")[0][0], read_tif(tmp_path / "b.tif")[0][0]
    assert np.isfinite(b).all() and np.array_equal(a, b)


def test_vsizip_and_vrt_inputs_through_the_core(despeckler, zipped, tmp_path):
    plain, name, _ = zipped
    vrt = str(tmp_path / "y.vrt")
    gdal.Translate(vrt, plain, format="VRT")
    for i, src in enumerate((plain, name, vrt)):
        despeckle_raster(src, str(tmp_path / f"o{i}.tif"), despeckler)
    outs = [read_tif(tmp_path / f"o{i}.tif")[0][0] for i in range(3)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_bad_vsizip_name_is_a_clear_processing_error(provider, tiny_model, zipped, tmp_path):
    _, _, zpath = zipped
    with pytest.raises(QgsProcessingException, match=r"INPUT.*/vsizip/.*missing\.tif"):
        despeckle({"INPUT": f"/vsizip/{zpath}/missing.tif", "MODEL": tiny_model[0], "DEVICE": 1,
                   "OUTPUT": str(tmp_path / "out.tif")})
    assert not os.path.exists(tmp_path / "out.tif")


def test_bad_vsizip_name_is_a_clear_core_error(despeckler, zipped, tmp_path):
    _, _, zpath = zipped
    with pytest.raises(DespeckNetError, match=r"GDAL cannot open.*missing\.tif"):
        despeckle_raster(f"/vsizip/{zpath}/missing.tif", str(tmp_path / "out.tif"), despeckler)


def test_output_never_overwrites_the_zip_behind_a_vsizip_input(provider, tiny_model, zipped, tmp_path):
    _, name, zpath = zipped
    before = zipfile.ZipFile(zpath).read("inner/y.tif")
    assert same_file(name, zpath)
    with pytest.raises(QgsProcessingException, match="OUTPUT .* is the input INPUT"):
        despeckle({"INPUT": name, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": zpath})
    assert zipfile.ZipFile(zpath).read("inner/y.tif") == before  # the raster inside is untouched
