"""Real radar products in, GIS-ready results out (issue 9): zero borders, complex values, output
domain and type, band names, metadata and provenance, and a processing extent.

Real GeoTIFFs through GDAL and the bundled model (the halo next to a zero border is a
property of a trained network; an untrained one shows none).
"""
import gc
import math
import os

import numpy as np
import pytest
from osgeo import gdal

from conftest import read_tif, speckled_scene, write_tif
from despecknet_qgis.core.errors import InputError
from despecknet_qgis.core.tiled_predict import despeckle_raster

BORDER = 24  # columns of zeros on the left, as on a Sentinel-1 GRD's swath edge


@pytest.fixture(scope="module")
def bundled():
    from despecknet_qgis.core.inference import Despeckler

    return Despeckler(None, "cpu")


@pytest.fixture(scope="module")
def grd_with_zero_border():
    """A 4.4-look correlated scene at sigma0 scale with a zero border and no declared nodata."""
    y, _ = speckled_scene(160, looks=4.4, correlation=0.5, seed=3)
    y = 0.05 * y
    y[:, :BORDER] = 0.0
    return y


def log_distortion(image, reference):
    """Mean |ln(image / reference)|: 0.23 is 1 dB off per pixel."""
    return float(np.abs(np.log(image / reference)).mean())


def _despeckle(despeckler, src, dst, **kw):
    despeckle_raster(str(src), str(dst), despeckler, **kw)
    arrays, ds = read_tif(dst)
    return arrays, ds


def test_zero_border_makes_no_halo(bundled, grd_with_zero_border, tmp_path):
    undeclared = write_tif(tmp_path / "zero.tif", grd_with_zero_border)
    declared = write_tif(tmp_path / "declared.tif", grd_with_zero_border, nodata=0.0)
    (out,), ds = _despeckle(bundled, undeclared, tmp_path / "out.tif")
    (ref,), _ = _despeckle(bundled, declared, tmp_path / "ref.tif")
    near = slice(BORDER, BORDER + 2)
    assert abs(out[:, near].mean() / ref[:, near].mean() - 1.0) < 0.10
    # the zeros stay zeros and are declared nodata, so a GIS shows them as no data
    assert ds.GetRasterBand(1).GetNoDataValue() == 0.0
    assert (out[:, :BORDER] == 0).all() and (out[:, BORDER:] > 0).all()
    # what ZERO_IS_NODATA protects against: read as signal, ln 0 makes a halo (1.4x to 4.7x the mean
    # next to the border, depending on the model; about 2 dB off per pixel with the 0.4.0 model)
    (halo,), _ = _despeckle(bundled, undeclared, tmp_path / "halo.tif", zero_is_nodata=False)
    assert log_distortion(halo[:, near], ref[:, near]) > 0.3 > 10 * log_distortion(out[:, near], ref[:, near])


def test_uint16_image_and_its_float32_copy_agree(bundled, grd_with_zero_border, tmp_path):
    dn = np.round(np.clip(grd_with_zero_border * 2e5, 0, 65535))  # DN², zeros where they round to 0 too
    as_uint16 = write_tif(tmp_path / "dn.tif", dn, dtype=gdal.GDT_UInt16)
    as_float32 = write_tif(tmp_path / "dn32.tif", dn.astype(np.float32))
    (a,), _ = _despeckle(bundled, as_uint16, tmp_path / "a.tif")
    (b,), _ = _despeckle(bundled, as_float32, tmp_path / "b.tif")
    valid = b > 0
    assert (a[valid] > 0).all()
    assert np.abs(a[valid] / b[valid] - 1).max() < 0.01


def test_zeros_in_decibel_are_data(bundled, tmp_path):
    y, _ = speckled_scene(96, looks=4.0, seed=5)
    db = 10 * np.log10(y)
    db[40:44, 40:44] = 0.0  # 0 dB: an intensity of 1, a bright but real value
    (out,), ds = _despeckle(bundled, write_tif(tmp_path / "db.tif", db), tmp_path / "out.tif", domain="decibel")
    assert ds.GetRasterBand(1).GetNoDataValue() is None
    assert np.isfinite(out[40:44, 40:44]).all()


@pytest.mark.parametrize("data_type", [gdal.GDT_CInt16, gdal.GDT_CInt32, gdal.GDT_CFloat32, gdal.GDT_CFloat64])
def test_complex_input_is_despeckled_as_intensity(bundled, tmp_path, data_type):
    rng = np.random.default_rng(7)
    y, scene = speckled_scene(96, looks=1.0, seed=7)
    amplitude = np.sqrt(y) * 300.0
    phase = rng.uniform(-np.pi, np.pi, y.shape)
    z = amplitude * np.exp(1j * phase)
    if data_type in (gdal.GDT_CInt16, gdal.GDT_CInt32):
        z = np.round(z.real) + 1j * np.round(z.imag)
    z[:, :6] = 0  # an undeclared zero border
    slc = write_tif(tmp_path / "slc.tif", z, dtype=data_type)
    intensity = write_tif(tmp_path / "i.tif", (np.abs(z) ** 2).astype(np.float32))
    (out,), _ = _despeckle(bundled, slc, tmp_path / "out.tif")
    (ref,), _ = _despeckle(bundled, intensity, tmp_path / "ref.tif")
    valid = ref > 0
    assert np.abs(out[valid] / ref[valid] - 1).max() < 1e-4
    # never the real part alone: it is often negative and would give another result entirely
    assert (z.real < 0).any()
    # the amplitude domain when asked: |z| in, sqrt of the same intensity out
    (amp,), _ = _despeckle(bundled, slc, tmp_path / "amp.tif", domain="amplitude")
    assert np.abs(amp[valid] / np.sqrt(ref[valid]) - 1).max() < 1e-4


def test_complex_input_refuses_decibel(bundled, tmp_path):
    z = (np.ones((64, 64)) + 1j).astype(np.complex64)
    slc = write_tif(tmp_path / "slc.tif", z, dtype=gdal.GDT_CFloat32)
    with pytest.raises(InputError, match="complex values, which cannot be decibels"):
        despeckle_raster(slc, str(tmp_path / "out.tif"), bundled, domain="decibel")
    assert not (tmp_path / "out.tif").exists()


def test_output_domain_and_nodata_in_decibel(bundled, grd_with_zero_border, tmp_path):
    src = write_tif(tmp_path / "in.tif", grd_with_zero_border)
    ds = gdal.Open(src, gdal.GA_Update)
    ds.GetRasterBand(1).SetUnitType("linear")
    ds = None
    (lin,), lin_ds = _despeckle(bundled, src, tmp_path / "lin.tif")
    (db,), ds = _despeckle(bundled, src, tmp_path / "db.tif", output_domain="decibel")
    # the input's unit holds for an output in its domain only; a decibel output says dB
    assert (lin_ds.GetRasterBand(1).GetUnitType(), ds.GetRasterBand(1).GetUnitType()) == ("linear", "dB")
    valid = lin > 0
    np.testing.assert_allclose(db[valid], 10 * np.log10(lin[valid]), atol=1e-4)
    # 0 dB is data: the border's nodata becomes NaN in a decibel output
    assert math.isnan(ds.GetRasterBand(1).GetNoDataValue())
    assert np.isnan(db[:, :BORDER]).all()
    assert ds.GetMetadataItem("DESPECKNET_OUTPUT_DOMAIN") == "decibel"
    (amp,), _ = _despeckle(bundled, src, tmp_path / "amp.tif", output_domain="amplitude")
    np.testing.assert_allclose(amp[valid], np.sqrt(lin[valid]), rtol=1e-6)


def test_output_type_float64(bundled, grd_with_zero_border, tmp_path):
    src = write_tif(tmp_path / "in.tif", grd_with_zero_border)
    (a,), ds = _despeckle(bundled, src, tmp_path / "f64.tif", output_type="Float64")
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float64
    (b,), _ = _despeckle(bundled, src, tmp_path / "f32.tif")
    np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(InputError, match="output_type"):
        despeckle_raster(src, str(tmp_path / "x.tif"), bundled, output_type="Int16")


def test_band_names_metadata_and_provenance_are_written(bundled, tmp_path):
    from despecknet_qgis.core.files import file_sha256
    from despecknet_qgis.core.model_info import bundled_model_path, plugin_version

    vv, _ = speckled_scene(96, seed=1)
    vh, _ = speckled_scene(96, seed=2)
    src = write_tif(tmp_path / "s1.tif", [vv, 0.2 * vh])
    ds = gdal.Open(src, gdal.GA_Update)
    ds.GetRasterBand(1).SetDescription("VV")
    ds.GetRasterBand(2).SetDescription("VH")
    ds.SetMetadataItem("MISSION_ID", "S1A")
    ds.GetRasterBand(1).SetMetadataItem("POLARISATION", "VV")
    ds.GetRasterBand(1).SetUnitType("linear")
    ds = None
    _, out = _despeckle(bundled, src, tmp_path / "out.tif", noise_path=str(tmp_path / "noise.tif"))
    assert [out.GetRasterBand(i).GetDescription() for i in (1, 2)] == ["VV", "VH"]
    # the input band's own metadata and unit are kept (they were dropped); the speckle has no unit
    assert out.GetRasterBand(1).GetMetadataItem("POLARISATION") == "VV"
    assert out.GetRasterBand(1).GetMetadataItem("DESPECKNET_MODEL") == "despecknet.onnx"
    assert out.GetRasterBand(1).GetUnitType() == "linear"
    meta = out.GetMetadata()
    assert meta["MISSION_ID"] == "S1A"
    assert meta["DESPECKNET_MODEL"] == "despecknet.onnx"
    assert meta["DESPECKNET_MODEL_VERSION"] == bundled.info.version
    assert meta["DESPECKNET_MODEL_SHA256"] == file_sha256(bundled_model_path())
    assert meta["DESPECKNET_PLUGIN_VERSION"] == plugin_version() != "unknown"
    assert meta["DESPECKNET_ALGORITHM"] == "despecknet:despeckle"
    assert meta["DESPECKNET_INPUT_DOMAIN"] == "intensity"
    assert meta["DESPECKNET_CONTENT"] == "despeckled"
    noise = gdal.Open(str(tmp_path / "noise.tif"))
    assert noise.GetMetadataItem("DESPECKNET_CONTENT") == "estimated speckle"
    assert noise.GetRasterBand(2).GetDescription() == "VH"
    assert noise.GetRasterBand(1).GetUnitType() == ""
    noise = None
    # a decibel output of intensity says dB (it had no unit)
    _, db = _despeckle(bundled, src, tmp_path / "db.tif", output_domain="decibel")
    assert db.GetRasterBand(1).GetUnitType() == "dB"
    # gdalinfo shows the provenance
    assert "DESPECKNET_MODEL_SHA256" in gdal.Info(str(tmp_path / "out.tif"))


def test_extent_equals_that_window_of_a_whole_run(bundled, grd_with_zero_border, tmp_path):
    pixel, origin = 20.0, (500000.0, 4000000.0)
    src = write_tif(tmp_path / "in.tif", grd_with_zero_border, origin=origin, pixel=pixel)
    (whole,), _ = _despeckle(bundled, src, tmp_path / "whole.tif", tile_size=64)
    # columns 50..129 and rows 30..99; edges inside pixels take the pixels they touch
    extent = (origin[0] + 50.5 * pixel, origin[1] - 99.5 * pixel, origin[0] + 129.2 * pixel, origin[1] - 30.7 * pixel)
    (part,), ds = _despeckle(bundled, src, tmp_path / "part.tif", extent=extent, tile_size=64)
    assert part.shape == (70, 80)
    np.testing.assert_allclose(part, whole[30:100, 50:130], rtol=1e-4)
    gt = ds.GetGeoTransform()
    assert gt[0] == origin[0] + 50 * pixel and gt[3] == origin[1] - 30 * pixel
    # an extent that misses the raster says so, and writes nothing
    with pytest.raises(InputError, match="does not overlap"):
        despeckle_raster(src, str(tmp_path / "none.tif"), bundled, extent=(0.0, 0.0, 10.0, 10.0))
    assert not (tmp_path / "none.tif").exists()


def test_an_extent_that_misses_the_raster_is_named_in_full_beside_the_raster_s_own(grd_with_zero_border, tmp_path):
    """`:g` printed UTM northings as 4.41235e+06 (two extents 50 m apart read alike), in (xmin, ymin, xmax, ymax)
    order, and the message did not say where the raster lies."""
    from despecknet_qgis.core.raster import window_of_extent

    src = write_tif(tmp_path / "in.tif", grd_with_zero_border, origin=(500000.0, 4412345.6), pixel=20.0)
    ds = gdal.Open(src)
    h, w = grd_with_zero_border.shape
    with pytest.raises(InputError) as caught:
        window_of_extent(ds, 400000.25, 4412000.5, 400100.0, 4412100.0, src)
    message = str(caught.value)
    caught = ds = None
    gc.collect()
    assert "(x 400000.25 to 400100, y 4412000.5 to 4412100) does not overlap" in message, message
    assert f"which covers x 500000 to {500000 + 20 * w}, y {4412345.6 - 20 * h:.1f} to 4412345.6" in message, message


def test_extent_on_a_raster_georeferenced_by_gcps_only(bundled, grd_with_zero_border, tmp_path):
    """A Sentinel-1 GRD (and the plugin's calibrated copy of it) has GCPs, no geotransform."""
    from osgeo import osr

    pixel, origin = 20.0, (500000.0, 4000000.0)
    north_up = write_tif(tmp_path / "gt.tif", grd_with_zero_border, origin=origin, pixel=pixel)
    with_gcps = str(tmp_path / "gcp.tif")
    gdal.Translate(with_gcps, north_up)
    ds = gdal.Open(with_gcps, gdal.GA_Update)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetGCPs([gdal.GCP(origin[0] + c * pixel, origin[1] - r * pixel, 0, c, r)
                for c, r in ((0, 0), (160, 0), (0, 160), (160, 160), (80, 40))], srs.ExportToWkt())
    ds = None
    assert gdal.Open(with_gcps).GetGeoTransform(can_return_null=True) is None
    extent = (origin[0] + 50.5 * pixel, origin[1] - 99.5 * pixel, origin[0] + 129.2 * pixel, origin[1] - 30.7 * pixel)
    (a,), _ = _despeckle(bundled, north_up, tmp_path / "a.tif", extent=extent)
    (b,), out = _despeckle(bundled, with_gcps, tmp_path / "b.tif", extent=extent)
    assert b.shape == a.shape == (70, 80)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    # the output's GCPs are moved with the window: pixel (0, 0) is the window's corner
    corner = [g for g in out.GetGCPs() if g.GCPX == origin[0] and g.GCPY == origin[1]][0]
    assert (corner.GCPPixel, corner.GCPLine) == (-50, -30)


def test_a_raster_without_georeferencing_is_placed_as_qgis_shows_it(bundled, tmp_path):
    """QGIS shows it with y upwards (row = -y): a polygon drawn over rows 20-29 was refused as outside,
    a point over row 30 landed on row -31; an extent was refused outright."""
    from despecknet_qgis.core.region_stats import region_statistics

    y, _ = speckled_scene(64, seed=1)
    y[20:30, 10:20] = 7.0
    plain = str(tmp_path / "plain.tif")
    ds = gdal.GetDriverByName("GTiff").Create(plain, 64, 64, 1, gdal.GDT_Float32)
    ds.GetRasterBand(1).WriteArray(y)
    ds = None
    stats = region_statistics(plain, ["POLYGON((10 -20, 20 -20, 20 -30, 10 -30, 10 -20))"])[0]
    assert (stats.pixels, stats.mean) == (100, pytest.approx(7.0))
    despeckle_raster(plain, str(tmp_path / "whole.tif"), bundled)
    despeckle_raster(plain, str(tmp_path / "part.tif"), bundled, extent=(10.0, -30.0, 20.0, -20.0))
    part = read_tif(tmp_path / "part.tif")[0][0]
    np.testing.assert_array_equal(part, read_tif(tmp_path / "whole.tif")[0][0][20:30, 10:20])


# An RPC model as ICEYE or TerraSAR-X GeoTIFFs carry one (linear here, exact to invert). RPCs count from pixel
# centres, GDAL (and QGIS) from the corner: GDAL's column c, row r is at longitude 10 + (c - 48.5) / 4800 and
# latitude 45 - (r - 48.5) / 4800.
RPC = {"LINE_OFF": "48", "SAMP_OFF": "48", "LAT_OFF": "45.0", "LONG_OFF": "10.0", "HEIGHT_OFF": "0",
       "LINE_SCALE": "48", "SAMP_SCALE": "48", "LAT_SCALE": "0.01", "LONG_SCALE": "0.01", "HEIGHT_SCALE": "100",
       "LINE_NUM_COEFF": " ".join(["0", "0", "-1"] + ["0"] * 17), "LINE_DEN_COEFF": " ".join(["1"] + ["0"] * 19),
       "SAMP_NUM_COEFF": " ".join(["0", "1"] + ["0"] * 18), "SAMP_DEN_COEFF": " ".join(["1"] + ["0"] * 19)}


def _lonlat(col, row):
    return 10 + (col - 48.5) / 4800, 45 - (row - 48.5) / 4800


def _rpc_raster(path, values, rpc=RPC):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), values.shape[1], values.shape[0], 1, gdal.GDT_Float32)
    ds.GetRasterBand(1).WriteArray(values.astype(np.float32))
    ds.SetMetadata(rpc, "RPC")
    ds = None
    return str(path)


def test_a_raster_placed_by_rpcs_keeps_them_in_its_outputs_moved_with_an_extent(bundled, tmp_path):
    """Every output dropped the RPCs: an ICEYE or TerraSAR-X image's result was placed nowhere."""
    from despecknet_qgis.core.raster import world_to_pixel

    y, _ = speckled_scene(96, seed=2)
    src = _rpc_raster(tmp_path / "rpc.tif", y)
    despeckle_raster(src, str(tmp_path / "whole.tif"), bundled)
    whole = gdal.Open(str(tmp_path / "whole.tif"))
    assert {k: float(v.split()[0]) for k, v in whole.GetMetadata("RPC").items() if k.endswith("_OFF")} == \
        {k: float(v) for k, v in RPC.items() if k.endswith("_OFF")}
    (x0, y1), (x1, y0) = _lonlat(20, 50), _lonlat(40, 30)
    despeckle_raster(src, str(tmp_path / "part.tif"), bundled, extent=(x0, y0, x1, y1))
    part = gdal.Open(str(tmp_path / "part.tif"))
    assert (part.RasterXSize, part.RasterYSize) == (20, 20)
    cols, rows = world_to_pixel(part)(*_lonlat(np.array([25.5]), np.array([35.5])))
    assert (cols[0], rows[0]) == (pytest.approx(5.5, abs=1e-6), pytest.approx(5.5, abs=1e-6))
    np.testing.assert_array_equal(part.ReadAsArray(), whole.ReadAsArray()[30:50, 20:40])


def test_polygons_and_points_over_a_raster_placed_by_rpcs_land_on_their_pixels(tmp_path):
    """They were read as pixel coordinates: C_NN was measured at the wrong pixel (0 dB for a 20 dB target) and
    polygons were refused as outside the raster, with success or a wrong message."""
    from despecknet_qgis.core.raster import world_to_pixel
    from despecknet_qgis.core.region_stats import region_statistics

    values = np.full((96, 96), 0.1)
    values[30:40, 20:30] = 1.0
    src = _rpc_raster(tmp_path / "rpc.tif", values)
    corners = [_lonlat(c, r) for c, r in ((20, 30), (30, 30), (30, 40), (20, 40), (20, 30))]
    stats = region_statistics(src, ["POLYGON((" + ", ".join(f"{x!r} {y!r}" for x, y in corners) + "))"])[0]
    assert (stats.pixels, stats.mean) == (100, pytest.approx(1.0))
    cols, rows = world_to_pixel(gdal.Open(src))(*_lonlat(np.array([20.5]), np.array([30.5])))
    assert (math.floor(rows[0]), math.floor(cols[0])) == (30, 20)


def test_rasters_placed_by_different_rpcs_are_not_one_grid(tmp_path):
    """Dates placed 48 pixels apart by their RPCs (and nothing else) passed as one grid: a temporal label
    and quality figures of misaligned pixels, reported as success."""
    from despecknet_qgis.core.raster import check_same_grid

    values = np.ones((96, 96))
    a = gdal.Open(_rpc_raster(tmp_path / "a.tif", values))
    check_same_grid(a, "a", gdal.Open(_rpc_raster(tmp_path / "a2.tif", values)), "a2")
    other = gdal.Open(_rpc_raster(tmp_path / "b.tif", values, {**RPC, "LINE_OFF": "0"}))
    with pytest.raises(InputError, match="other RPCs"):
        check_same_grid(a, "a", other, "b")


def test_grids_equal_but_for_rounding_are_one_grid_and_a_reprojected_extent_takes_no_extra_ring(tmp_path):
    """Origins 1e-9 m apart were refused as another geotransform; the corners of a 10x10-pixel window given in
    EPSG:4326 (2.3e-4 pixel beyond it once reprojected) gave a 12x12 output."""
    from despecknet_qgis.core.raster import check_same_grid, window_of_extent

    def raster(name, gt):
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / name), 64, 64, 1, gdal.GDT_Float32)
        ds.SetGeoTransform(gt)
        return ds

    a = raster("a.tif", (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0))
    check_same_grid(a, "a", raster("b.tif", (500000.0 + 1e-9, 10.0, 0.0, 4000000.0 - 1e-9, 0.0, -10.0)), "b")
    with pytest.raises(InputError, match="another geotransform"):
        check_same_grid(a, "a", raster("c.tif", (500005.0, 10.0, 0.0, 4000000.0, 0.0, -10.0)), "c")
    over = 2.3e-4 * 10.0
    win = window_of_extent(a, 500200.0 - over, 3999600.0 - over, 500300.0 + over, 3999700.0 + over)
    assert (win.x, win.y, win.w, win.h) == (20, 30, 10, 10)


# --- the same choices as Processing parameters, in QGIS and in qgis_process ------------------------


def _run(algorithm, params):
    import processing
    from qgis.core import QgsProcessingFeedback

    return processing.run(algorithm, params, feedback=QgsProcessingFeedback())


def test_despeckle_parameters_zero_output_domain_type_and_extent(provider, grd_with_zero_border, tmp_path):
    pixel, origin = 20.0, (500000.0, 4000000.0)
    src = write_tif(tmp_path / "in.tif", grd_with_zero_border, origin=origin, pixel=pixel)
    whole = tmp_path / "whole.tif"
    _run("despecknet:despeckle", {"INPUT": src, "OUTPUT": str(whole)})
    (ref,), _ = read_tif(whole)
    x0, x1, y0, y1 = origin[0] + 10 * pixel, origin[0] + 90 * pixel, origin[1] - 120 * pixel, origin[1] - 40 * pixel
    out = tmp_path / "part.tif"
    # enumerations by name, the extent as the modeler and qgis_process write it
    _run("despecknet:despeckle", {"INPUT": src, "OUTPUT": str(out), "OUTPUT_DOMAIN": "decibel",
                                  "OUTPUT_TYPE": "Float64", "EXTENT": f"{x0},{x1},{y0},{y1} [EPSG:32633]"})
    (db,), ds = read_tif(out)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float64 and db.shape == (80, 80)
    window = ref[40:120, 10:90]
    valid = window > 0
    np.testing.assert_allclose(db[valid], 10 * np.log10(window[valid]), atol=1e-3)
    assert np.isnan(db[:, :BORDER - 10]).all()
    # ZERO_IS_NODATA off gives the halo back (what the default protects against)
    halo = tmp_path / "halo.tif"
    _run("despecknet:despeckle", {"INPUT": src, "OUTPUT": str(halo), "ZERO_IS_NODATA": False})
    (h,), hds = read_tif(halo)
    assert hds.GetRasterBand(1).GetNoDataValue() is None
    assert log_distortion(h[:, BORDER:BORDER + 2], ref[:, BORDER:BORDER + 2]) > 0.3


def test_extent_outside_the_raster_is_a_clear_error(provider, grd_with_zero_border, tmp_path):
    from qgis.core import QgsProcessingException

    src = write_tif(tmp_path / "in.tif", grd_with_zero_border)
    with pytest.raises(QgsProcessingException, match="EXTENT .* does not overlap"):
        _run("despecknet:despeckle", {"INPUT": src, "OUTPUT": str(tmp_path / "o.tif"),
                                      "EXTENT": "0,10,0,10 [EPSG:32633]"})
    assert not (tmp_path / "o.tif").exists()


def test_headless_decibel_output_with_provenance(profile, grd_with_zero_border, tmp_path):
    import json

    from conftest import run_qgis_process

    src = write_tif(tmp_path / "in.tif", grd_with_zero_border)
    out = tmp_path / "db.tif"
    proc = run_qgis_process("--json", "run", "despecknet:despeckle", "--", f"INPUT={src}", "OUTPUT_DOMAIN=decibel",
                            f"OUTPUT={out}", profile=profile)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    json.loads(proc.stdout[proc.stdout.index("{"):])
    info = gdal.Info(str(out), format="json")
    assert info["metadata"][""]["DESPECKNET_OUTPUT_DOMAIN"] == "decibel"
    assert info["bands"][0]["noDataValue"] == "NaN"


def test_finetune_output_in_decibel_with_its_provenance(provider, tiny_model, grd_with_zero_border, tmp_path):
    src = write_tif(tmp_path / "in.tif", grd_with_zero_border)
    res = _run("despecknet:finetune", {
        "INPUT": src, "MODEL": tiny_model[0][:-5] + ".pt", "PATCH_SIZE": 24, "STRIDE": 24, "BATCH_SIZE": 8,
        "OUTPUT_DOMAIN": "decibel", "OUTPUT_TYPE": "Float64", "OUTPUT_MODEL": str(tmp_path / "tuned.onnx"),
        "OUTPUT": str(tmp_path / "db.tif")})
    (db,), ds = read_tif(res["OUTPUT"])
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float64
    assert np.isnan(db[:, :BORDER]).all() and np.isfinite(db[:, BORDER:]).all()
    meta = ds.GetMetadata()
    assert meta["DESPECKNET_ALGORITHM"] == "despecknet:finetune"
    assert meta["DESPECKNET_OUTPUT_DOMAIN"] == "decibel" and meta["DESPECKNET_MODEL"] == "tuned.onnx"


def test_classic_filter_treats_zero_borders_as_despeckle_does(grd_with_zero_border, tmp_path):
    from despecknet_qgis.core.classic_filters import classic_filter_raster

    undeclared = write_tif(tmp_path / "zero.tif", grd_with_zero_border)
    declared = write_tif(tmp_path / "declared.tif", grd_with_zero_border, nodata=0.0)
    classic_filter_raster(undeclared, str(tmp_path / "a.tif"), method="lee")
    classic_filter_raster(declared, str(tmp_path / "b.tif"), method="lee")
    (a,), ds = read_tif(tmp_path / "a.tif")
    (b,), _ = read_tif(tmp_path / "b.tif")
    assert ds.GetRasterBand(1).GetNoDataValue() == 0.0
    np.testing.assert_array_equal(a, b)


def test_region_statistics_of_complex_and_zero_bordered_bands(grd_with_zero_border, tmp_path):
    from despecknet_qgis.core.region_stats import region_statistics

    rng = np.random.default_rng(3)
    intensity = grd_with_zero_border.astype(np.complex64)
    z = np.sqrt(intensity) * np.exp(1j * rng.uniform(-np.pi, np.pi, intensity.shape)).astype(np.complex64)
    slc = write_tif(tmp_path / "slc.tif", z, dtype=gdal.GDT_CFloat32)
    power = write_tif(tmp_path / "i.tif", (np.abs(z) ** 2).astype(np.float32), nodata=0.0)
    # a polygon over the zero border and the image: pixels are 20 m, origin (500000, 4000000)
    wkt = "POLYGON((500000 3998000, 501000 3998000, 501000 3999000, 500000 3999000, 500000 3998000))"
    (a,), (b,) = region_statistics(slc, [wkt]), region_statistics(power, [wkt])
    assert a.pixels == b.pixels == 50 * (50 - BORDER)
    assert a.mean == pytest.approx(b.mean, rel=1e-5) and a.enl == pytest.approx(b.enl, rel=1e-4)


def test_temporal_label_leaves_zero_borders_out(tmp_path):
    from despecknet_qgis.core.temporal_label import temporal_label

    truth = speckled_scene(96, seed=11)[1].reflectivity
    rng = np.random.default_rng(12)
    dates = []
    for k in range(5):
        y = truth * rng.gamma(4.4, 1 / 4.4, truth.shape)
        y[:, : 10 + 2 * k] = 0.0  # each date's swath edge at its own place, no nodata declared
        dates.append(write_tif(tmp_path / f"d{k}.tif", y))
    temporal_label(dates, str(tmp_path / "label.tif"))
    (label,), _ = read_tif(tmp_path / "label.tif")
    assert np.isnan(label[:, :18]).all()
    covered = label[:, 18:]
    assert np.isfinite(covered).mean() > 0.5 and (covered[np.isfinite(covered)] > 0).all()


def test_read_back_refuses_an_output_cut_short_in_a_block(tmp_path):
    """The read-back decodes every block (on all cores, in strips): a file cut short, as on a full
    disk, fails the output even where the threads that decode it report no error of their own."""
    from despecknet_qgis.core.errors import OutputError
    from despecknet_qgis.core.raster import RasterOutput, Window

    src = str(tmp_path / "in.tif")
    values = np.random.default_rng(4).gamma(1.0, 1.0, (600, 700)).astype(np.float32)
    write_tif(src, values)
    like = gdal.Open(src)
    out = RasterOutput(str(tmp_path / "out.tif"), like, 1, [None])
    out.write(1, Window(0, 0, 700, 600), values)
    out.finish()  # whole: reads back
    ds = gdal.Open(out.tmp)
    offset = int(ds.GetRasterBand(1).GetMetadataItem("BLOCK_OFFSET_1_1", "TIFF"))
    size = int(ds.GetRasterBand(1).GetMetadataItem("BLOCK_SIZE_1_1", "TIFF"))
    ds = None
    with open(out.tmp, "r+b") as fh:  # the file ends in the middle of block (1, 1)
        fh.truncate(offset + size // 2)
    with pytest.raises(OutputError, match="Writing .* failed"):
        out._read_back()
    out.discard()


def test_classic_filter_temporal_label_and_ratio_outputs_carry_band_names_and_provenance(tmp_path):
    """Those three outputs had no band names and no metadata, so a batch folder scan took them for scenes."""
    from despecknet_qgis.batch.plan import despecknet_output
    from despecknet_qgis.core.classic_filters import classic_filter_raster
    from despecknet_qgis.core.model_info import plugin_version
    from despecknet_qgis.core.quality import quality_metrics
    from despecknet_qgis.core.temporal_label import temporal_label

    dates = []
    for k in range(3):
        dates.append(write_tif(tmp_path / f"d{k}.tif", speckled_scene(64, seed=80 + k)[0]))
        ds = gdal.Open(dates[-1], gdal.GA_Update)
        ds.GetRasterBand(1).SetDescription("VV")
        ds.SetMetadataItem("MISSION_ID", "S1A")
        ds = None
    lee, label, mask, ratio = (str(tmp_path / n) for n in ("lee.tif", "label.tif", "mask.tif", "ratio.tif"))
    classic_filter_raster(dates[0], lee, "lee")
    temporal_label(dates, label, mask)
    quality_metrics(lee, dates[0], ratio_output=ratio)
    expected = {lee: ("despecknet:classicfilter", "VV"), label: ("despecknet:temporallabel", "VV"),
                mask: ("despecknet:temporallabel", "stable VV"), ratio: ("despecknet:quality", "Y / X_hat VV")}
    for path, (algorithm, name) in expected.items():
        ds = gdal.Open(path)
        meta = ds.GetMetadata()
        assert meta["DESPECKNET_ALGORITHM"] == algorithm and meta["DESPECKNET_PLUGIN_VERSION"] == plugin_version()
        assert ds.GetRasterBand(1).GetDescription() == name and despecknet_output(path)
        assert meta["MISSION_ID"] == "S1A"  # the input's own metadata is kept
    assert not despecknet_output(dates[0])


def test_an_output_says_where_point_targets_were_not_restored_because_the_looks_are_unknown(despeckler, tmp_path):
    """With no fully valid 16x16 block the looks cannot be estimated and the point-target step is skipped:
    the metadata said "kept" all the same."""
    y, _ = speckled_scene(96, seed=11)
    y[::12, :] = -1.0  # nodata every 12 rows: no fully valid 16x16 block
    src = write_tif(tmp_path / "holes.tif", y, nodata=-1.0)
    messages = []
    from despecknet_qgis.core.progress import Progress

    despeckle_raster(src, str(tmp_path / "out.tif"), despeckler, progress=Progress(log=messages.append))
    meta = gdal.Open(str(tmp_path / "out.tif")).GetMetadata()
    assert meta["DESPECKNET_POINT_TARGETS"] == "kept, except band(s) 1 (looks unknown)"
    assert any("point targets are not restored" in m for m in messages)
    despeckle_raster(src, str(tmp_path / "given.tif"), despeckler, looks=1.0)
    assert gdal.Open(str(tmp_path / "given.tif")).GetMetadata()["DESPECKNET_POINT_TARGETS"] == "kept"


def test_each_band_of_a_multi_band_output_names_its_model_and_looks(tmp_path):
    """The dataset's metadata listed each model once: which band got which was only in the log."""
    from despecknet_qgis.core.inference import Despeckler
    from despecknet_qgis.core.simulate import simulate_speckle

    rng = np.random.default_rng(12)
    x = np.full((128, 128), 0.1)
    bands = [x * simulate_speckle(x.shape, 1.0, 0.0, rng), x * simulate_speckle(x.shape, 5.0, 0.0, rng)]
    src = write_tif(tmp_path / "mixed.tif", bands)
    despeckle_raster(src, str(tmp_path / "out.tif"), Despeckler(None, "cpu"))  # the bundled pair
    out = gdal.Open(str(tmp_path / "out.tif"))
    per_band = [out.GetRasterBand(b).GetMetadata() for b in (1, 2)]
    assert [m["DESPECKNET_MODEL"] for m in per_band] == ["despecknet.onnx", "despecknet_multilook.onnx"]
    assert float(per_band[0]["DESPECKNET_LOOKS"]) == pytest.approx(1.0, rel=0.2)
    assert float(per_band[1]["DESPECKNET_LOOKS"]) == pytest.approx(5.0, rel=0.2)


def _masked_copy(tmp_path, name, values, mask):
    """A GeoTIFF whose validity is an internal GDAL mask (no nodata value), as gdalwarp -dstalpha or COGs give."""
    path = write_tif(tmp_path / name, values)
    ds = gdal.Open(path, gdal.GA_Update)
    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
    ds.GetRasterBand(1).GetMaskBand().WriteArray(mask.astype(np.uint8) * 255)
    ds = None
    return path


def test_pixels_under_a_gdal_mask_are_nodata_not_data(despeckler, tmp_path):
    # Every function read masked pixels as data: a fill of 12345 under the mask was despeckled and filtered
    # (its neighbours came out 11.6 times too bright), counted in statistics and called stable.
    from despecknet_qgis.core.classic_filters import classic_filter_raster
    from despecknet_qgis.core.region_stats import region_statistics
    from despecknet_qgis.core.temporal_label import temporal_label

    y, _ = speckled_scene(96, seed=21)
    y = (50 * y).astype(np.float32)
    mask = np.ones(y.shape, bool)
    mask[:12] = False
    filled = np.where(mask, y, 12345.0).astype(np.float32)
    masked, as_nodata = _masked_copy(tmp_path, "masked.tif", filled, mask), write_tif(tmp_path / "nan.tif", np.where(mask, y, np.nan), nodata=float("nan"))
    for run, name in ((lambda i, o: despeckle_raster(i, o, despeckler), "despeckle"),
                      (lambda i, o: classic_filter_raster(i, o, "lee"), "lee")):
        run(masked, str(tmp_path / f"{name}_masked.tif"))
        run(as_nodata, str(tmp_path / f"{name}_nan.tif"))
        (got,), ds = read_tif(tmp_path / f"{name}_masked.tif")
        (want,), _ = read_tif(tmp_path / f"{name}_nan.tif")
        nodata = ds.GetRasterBand(1).GetNoDataValue()  # 0: no value declared, zeros are nodata (GRD borders)
        assert nodata is not None and (np.isnan(got[:12]).all() if math.isnan(nodata) else (got[:12] == nodata).all())
        np.testing.assert_allclose(got[12:], want[12:], rtol=1e-5)
    square = "POLYGON((500000 4000000,500800 4000000,500800 3999400,500000 3999400,500000 4000000))"  # rows 0-29
    st, ref = region_statistics(masked, [square])[0], region_statistics(as_nodata, [square])[0]
    assert st.pixels == ref.pixels == 18 * 40 and st.mean == pytest.approx(ref.mean)
    rng = np.random.default_rng(3)
    dates = [_masked_copy(tmp_path, f"d{k}.tif", np.where(mask, y * rng.gamma(4, 0.25, y.shape), 12345.0).astype(np.float32), mask)
             for k in range(4)]
    report = temporal_label(dates, str(tmp_path / "label.tif"), str(tmp_path / "stable.tif"))
    assert report.valid_pixels == int(mask.sum())


def test_bands_whose_nodata_differ_are_written_with_one_nodata_that_holds_for_all(despeckler, tmp_path):
    # A GeoTIFF holds one nodata value: VV with nodata 0 and VH with NaN (stacked with gdalbuildvrt -separate)
    # came out declaring NaN for both, VV's 0 fill then read as data; GDAL only warned.
    from despecknet_qgis.core.classic_filters import classic_filter_raster

    vv, _ = speckled_scene(96, seed=22)
    vh, _ = speckled_scene(96, seed=23)
    vv[:, :10] = 0.0
    vh[:, :10] = np.nan
    vrt = gdal.BuildVRT(str(tmp_path / "stack.vrt"), [write_tif(tmp_path / "vv.tif", vv, nodata=0.0),
                                                     write_tif(tmp_path / "vh.tif", vh, nodata=float("nan"))], separate=True)
    vrt = None
    for name, run in (("despeckle", lambda o: despeckle_raster(str(tmp_path / "stack.vrt"), o, despeckler)),
                      ("lee", lambda o: classic_filter_raster(str(tmp_path / "stack.vrt"), o, "lee"))):
        run(str(tmp_path / f"{name}.tif"))
        ds = gdal.Open(str(tmp_path / f"{name}.tif"))
        for b in (1, 2):
            band = ds.GetRasterBand(b)
            assert math.isnan(band.GetNoDataValue())
            assert np.isnan(band.ReadAsArray()[:, :10]).all() and np.isfinite(band.ReadAsArray()[:, 10:]).all()


def test_a_nodata_value_that_float32_cannot_hold_exactly_still_marks_the_fill(despeckler, tmp_path):
    # An ENVI or VRT nodata of 9999.9 was compared as a double with the stored float32 9999.900390625:
    # the fill was despeckled as data (and -9999.9 was refused as "negative values" although declared).
    y, _ = speckled_scene(96, seed=24)
    for fill in (9999.9, -9999.9):
        filled = np.where(np.arange(96)[:, None] < 10, fill, y).astype(np.float32)
        src = write_tif(tmp_path / "raw.tif", filled)
        vrt = gdal.Translate(str(tmp_path / "nd.vrt"), src, format="VRT")
        vrt = None
        text = (tmp_path / "nd.vrt").read_text()  # as written by hand or by other tools: the decimal value
        (tmp_path / "nd.vrt").write_text(text.replace("<ColorInterp>", f"<NoDataValue>{fill}</NoDataValue><ColorInterp>", 1))
        assert gdal.Open(str(tmp_path / "nd.vrt")).GetRasterBand(1).GetNoDataValue() == fill
        despeckle_raster(str(tmp_path / "nd.vrt"), str(tmp_path / "out.tif"), despeckler)
        (out,), _ = read_tif(tmp_path / "out.tif")
        assert not np.isfinite(out[:10]).any() or (out[:10] == np.float32(fill)).all()
        assert np.isfinite(out[10:]).all() and out[10:].max() < 100


# --- output fidelity (audit 27): what an output keeps of its input ------------------------------------------


def _band_items(path, band=1):
    ds = gdal.Open(str(path))
    items, unit = dict(ds.GetRasterBand(band).GetMetadata()), ds.GetRasterBand(band).GetUnitType()
    dataset_items = dict(ds.GetMetadata())
    ds = None
    return dataset_items, items, unit


def test_an_alpha_band_is_neither_despeckled_nor_taken_for_a_date(bundled, tmp_path):
    """A UInt16 raster with an alpha band (gdalwarp -dstalpha): "every band" despeckled the transparency as a
    second polarisation, and temporallabel took it for a second date (STABLE_FRACTION 1, success)."""
    from despecknet_qgis.core.raster import band_numbers
    from despecknet_qgis.core.temporal_label import temporal_label

    y, _ = speckled_scene(96, seed=6)
    src = write_tif(tmp_path / "rgba.tif", [np.clip(100 * y, 1, 60000), np.full(y.shape, 65535.0)], dtype=gdal.GDT_UInt16)
    ds = gdal.Open(src, gdal.GA_Update)
    ds.GetRasterBand(2).SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    assert band_numbers(src) == [1]
    report = despeckle_raster(src, str(tmp_path / "out.tif"), bundled)
    assert [b.band for b in report.bands] == [1]
    assert gdal.Open(str(tmp_path / "out.tif")).RasterCount == 1
    with pytest.raises(InputError, match="multi-band raster whose bands are the dates"):
        temporal_label([src], str(tmp_path / "label.tif"))
    # a band chosen by number is the user's choice, as before
    despeckle_raster(src, str(tmp_path / "b1.tif"), bundled, bands=[1])


def test_an_output_carries_no_provenance_of_the_run_that_made_its_input(bundled, tmp_path):
    """Despeckling a plugin output copied that run's items: the band said POINT_TARGETS_RESTORED beside a
    dataset saying POINT_TARGETS=off; a despeckled temporal label kept the label's RULE, ALPHA and DATES."""
    from despecknet_qgis.core.temporal_label import temporal_label

    rng = np.random.default_rng(4)
    x = speckled_scene(96, looks=50.0, seed=7)[0]
    dates = [write_tif(tmp_path / f"d{t}.tif", (x * rng.gamma(1.0, 1.0, x.shape)).astype(np.float32)) for t in range(4)]
    temporal_label(dates, str(tmp_path / "label.tif"), looks=1.0)
    once = tmp_path / "once.tif"
    despeckle_raster(dates[0], str(once), bundled)
    again = tmp_path / "again.tif"
    despeckle_raster(str(once), str(again), bundled, point_targets=False)
    meta, band, _ = _band_items(again)
    assert meta["DESPECKNET_POINT_TARGETS"] == "off" and "DESPECKNET_POINT_TARGETS_RESTORED" not in band, band
    assert meta["DESPECKNET_INPUT"] == "once.tif"
    despeckle_raster(str(tmp_path / "label.tif"), str(tmp_path / "of_label.tif"), bundled)
    meta, _, _ = _band_items(tmp_path / "of_label.tif")
    assert not {"DESPECKNET_RULE", "DESPECKNET_ALPHA", "DESPECKNET_DATES", "DESPECKNET_TEST_WINDOW"} & set(meta), meta
    assert meta["DESPECKNET_ALGORITHM"] == "despecknet:despeckle" and meta["DESPECKNET_CONTENT"] == "despeckled"


def test_the_temporal_label_keeps_the_dates_unit_and_band_items(tmp_path):
    """A label of dB dates (unit dB, POLARISATION VV) had no unit and no polarisation; despeckle kept both."""
    from despecknet_qgis.core.temporal_label import temporal_label

    rng = np.random.default_rng(5)
    x = speckled_scene(64, looks=50.0, seed=8)[0]
    dates = []
    for t in range(4):
        path = write_tif(tmp_path / f"d{t}.tif", (10 * np.log10(x * rng.gamma(1.0, 1.0, x.shape))).astype(np.float32))
        ds = gdal.Open(path, gdal.GA_Update)
        ds.GetRasterBand(1).SetUnitType("dB")
        ds.GetRasterBand(1).SetMetadataItem("POLARISATION", "VV")
        ds = None
        dates.append(path)
    temporal_label(dates, str(tmp_path / "label.tif"), str(tmp_path / "mask.tif"), domain="decibel", looks=1.0)
    _, band, unit = _band_items(tmp_path / "label.tif")
    assert unit == "dB" and band.get("POLARISATION") == "VV", (unit, band)
    _, band, unit = _band_items(tmp_path / "mask.tif")
    assert band.get("POLARISATION") == "VV" and unit == ""


def test_an_output_written_over_an_old_one_drops_the_old_one_s_statistics_and_overviews(bundled, tmp_path):
    """QGIS writes out.tif.aux.xml (statistics) and out.tif.ovr (pyramids) beside a raster it shows; a rerun
    onto out.tif kept them: the new layer was stretched by the old file's 22.6 to 1823 (its own 0.03 to 2)
    and drawn from the old pixels when zoomed out."""
    out = tmp_path / "out.tif"
    bright = write_tif(tmp_path / "bright.tif", (1000 * speckled_scene(96, seed=9)[0]).astype(np.float32))
    despeckle_raster(bright, str(out), bundled)
    ds = gdal.Open(str(out))
    ds.GetRasterBand(1).ComputeStatistics(False)  # as gdalinfo -stats or QGIS's display: into out.tif.aux.xml
    ds.BuildOverviews("AVERAGE", [2])  # external, out.tif.ovr, as QGIS's pyramids
    ds = None
    assert os.path.exists(f"{out}.aux.xml") and os.path.exists(f"{out}.ovr")
    dim = write_tif(tmp_path / "dim.tif", (0.01 * speckled_scene(96, seed=10)[0]).astype(np.float32))
    despeckle_raster(dim, str(out), bundled)
    assert not os.path.exists(f"{out}.aux.xml") and not os.path.exists(f"{out}.ovr")
    ds = gdal.Open(str(out))
    assert ds.GetRasterBand(1).GetOverviewCount() == 0
    assert ds.GetRasterBand(1).GetMetadataItem("STATISTICS_MAXIMUM") is None
    assert float(np.nanmax(ds.GetRasterBand(1).ReadAsArray())) < 10
    ds = None


def test_a_window_of_a_raster_without_georeferencing_stays_where_qgis_drew_it(bundled, tmp_path):
    """An EXTENT over a raster with no georeferencing is read on QGIS's default grid (x = column, y = -row);
    the 40x40 window was written without any, so QGIS drew it at the top left instead of where it was cut."""
    y, _ = speckled_scene(96, seed=11)
    src = str(tmp_path / "plain.tif")
    ds = gdal.GetDriverByName("GTiff").Create(src, 96, 96, 1, gdal.GDT_Float32)
    ds.GetRasterBand(1).WriteArray(y.astype(np.float32))
    ds = None
    (part,), ds = _despeckle(bundled, src, tmp_path / "part.tif", extent=(10.0, -60.0, 50.0, -20.0))
    assert part.shape == (40, 40)
    assert ds.GetGeoTransform() == (10.0, 1.0, 0.0, -20.0, 0.0, -1.0)
    ds = None
    # the whole raster stays as it was: no georeferencing added
    (_,), ds = _despeckle(bundled, src, tmp_path / "whole.tif")
    assert ds.GetGeoTransform(can_return_null=True) is None
    ds = None


def test_a_dynamic_crs_keeps_its_coordinate_epoch(bundled, tmp_path):
    """The CRS was copied as WKT1, which has no epoch: ITRF2014 at 2021.5 came out at epoch 0."""
    from osgeo import osr

    src = write_tif(tmp_path / "itrf.tif", speckled_scene(64, seed=12)[0].astype(np.float32))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(9000)
    srs.SetCoordinateEpoch(2021.5)
    ds = gdal.Open(src, gdal.GA_Update)
    ds.SetSpatialRef(srs)
    ds = None
    (_,), ds = _despeckle(bundled, src, tmp_path / "out.tif")
    kept = ds.GetSpatialRef()
    ds = None
    assert kept.GetCoordinateEpoch() == 2021.5 and "ITRF2014" in kept.GetName(), kept.ExportToWkt()


def test_geolocation_arrays_are_kept_and_follow_an_extent(bundled, tmp_path):
    """A swath product placed by longitude/latitude arrays (GDAL's GEOLOCATION domain) came out with no
    georeferencing at all, reported as success."""
    from despecknet_qgis.core.raster import shifted_geolocation

    y, _ = speckled_scene(64, seed=13)
    src = write_tif(tmp_path / "swath.tif", y.astype(np.float32))
    lon = write_tif(tmp_path / "lon.tif", np.tile(np.linspace(5.0, 5.6, 64), (64, 1)).astype(np.float32))
    lat = write_tif(tmp_path / "lat.tif", np.tile(np.linspace(52.6, 52.0, 64)[:, None], (1, 64)).astype(np.float32))
    ds = gdal.Open(src, gdal.GA_Update)
    ds.SetGeoTransform((0, 1, 0, 0, 0, 1))
    ds = None
    geolocation = {"X_DATASET": lon, "X_BAND": "1", "Y_DATASET": lat, "Y_BAND": "1", "PIXEL_OFFSET": "0",
                   "LINE_OFFSET": "0", "PIXEL_STEP": "1", "LINE_STEP": "1",
                   "SRS": 'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
                          'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]]'}
    vrt = gdal.Translate(str(tmp_path / "swath.vrt"), src, format="VRT")
    vrt.SetMetadata(geolocation, "GEOLOCATION")
    vrt = None
    (_,), ds = _despeckle(bundled, tmp_path / "swath.vrt", tmp_path / "out.tif")
    kept = ds.GetMetadata("GEOLOCATION")
    ds = None
    assert kept and kept["X_DATASET"] == lon and float(kept["PIXEL_OFFSET"]) == 0.0
    shifted = shifted_geolocation(geolocation, 10, 20)
    assert float(shifted["PIXEL_OFFSET"]) == -10.0 and float(shifted["LINE_OFFSET"]) == -20.0
