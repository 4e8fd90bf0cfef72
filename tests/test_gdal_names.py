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


def test_the_file_behind_a_vrt_input_is_never_overwritten(provider, tiny_model, despeckler, zipped, tmp_path):
    """A VRT reads other files: writing the output onto one of them would destroy the input."""
    plain, _, _ = zipped
    vrt = str(tmp_path / "scene.vrt")
    gdal.BuildVRT(vrt, [plain]).FlushCache()
    before = open(plain, "rb").read()
    with pytest.raises(QgsProcessingException, match=r"OUTPUT .*y\.tif is a file that the input INPUT .*scene\.vrt"):
        despeckle({"INPUT": vrt, "MODEL": tiny_model[0], "DEVICE": 1, "OUTPUT": plain})
    with pytest.raises(DespeckNetError, match=r"y\.tif is a file that the input `input_path`"):
        despeckle_raster(vrt, plain, despeckler)
    assert open(plain, "rb").read() == before


def test_a_band_with_scale_and_offset_is_despeckled_in_the_values_qgis_shows(despeckler, tmp_path):
    """Int16 dB x 100 with scale 0.01 was despeckled as raw integers: -1298 to -59 'dB' with no scale."""
    y, _ = speckled_scene(64, seed=41)
    raw = np.round(10 * np.log10(y) * 100).astype(np.int16)
    packed = write_tif(tmp_path / "db_x100.tif", raw, nodata=-32768, dtype=gdal.GDT_Int16)
    ds = gdal.Open(packed, gdal.GA_Update)
    ds.GetRasterBand(1).SetScale(0.01)
    ds.GetRasterBand(1).SetOffset(-0.5)
    ds = None
    plain = write_tif(tmp_path / "db.tif", raw * 0.01 - 0.5)
    for src in (packed, plain):
        despeckle_raster(src, str(tmp_path / ("out_" + os.path.basename(src))), despeckler, domain="decibel")
    a, b = read_tif(tmp_path / "out_db_x100.tif")[0][0], read_tif(tmp_path / "out_db.tif")[0][0]
    assert -60 < a.min() and a.max() < 30  # decibels, not hundredths of them
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_one_date_spelled_two_ways_is_one_date(provider, tmp_path, monkeypatch):
    """NETCDF:"d.nc":v and NETCDF:d.nc:v, an absolute and a relative /vsizip/ name, a zip and a link to it: one
    date given twice passed as two and made the label look stable (looks 16.2 instead of 4.0, reported done)."""
    import processing

    from despecknet_qgis.core.files import same_dataset
    from despecknet_qgis.core.temporal_label import temporal_label

    dates = [write_tif(tmp_path / f"d{i}.tif", speckled_scene(48, seed=i)[0].astype(np.float32)) for i in range(3)]
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        for d in dates:
            z.write(d, os.path.basename(d))
    os.symlink(tmp_path / "z.zip", tmp_path / "link.zip")
    gdal.Translate(str(tmp_path / "d0.nc"), dates[0], format="netCDF")
    monkeypatch.chdir(tmp_path)
    spellings = [(f'NETCDF:"{tmp_path}/d0.nc":Band1', f"NETCDF:{tmp_path}/d0.nc:Band1"),
                 (f'NETCDF:"{tmp_path}/d0.nc":Band1', 'NETCDF:"d0.nc":Band1'),
                 (f"/vsizip/{tmp_path}/z.zip/d0.tif", "/vsizip/z.zip/d0.tif"),
                 (f"/vsizip/{tmp_path}/z.zip/d0.tif", f"/vsizip/{tmp_path}/link.zip/d0.tif")]
    for a, b in spellings:
        assert same_dataset(a, b), (a, b)
        with pytest.raises(DespeckNetError, match="are the same date"):
            temporal_label([a, b, dates[1]], str(tmp_path / "l.tif"))
        with pytest.raises(QgsProcessingException, match="more than once"):
            processing.run("despecknet:temporallabel", {"INPUTS": [a, b, dates[1]], "OUTPUT": str(tmp_path / "l.tif")},
                           feedback=QgsProcessingFeedback())
    # two members of one zip, two variables of one file: two dates
    assert not same_dataset(f"/vsizip/{tmp_path}/z.zip/d0.tif", f"/vsizip/{tmp_path}/z.zip/d1.tif")
    assert not same_dataset(f'NETCDF:"{tmp_path}/d0.nc":Band1', f'NETCDF:"{tmp_path}/d0.nc":Band2')
    assert not (tmp_path / "l.tif").exists()
