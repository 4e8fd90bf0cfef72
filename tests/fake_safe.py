"""A small Sentinel-1 SAFE product built for the tests, laid out the way GDAL's SENTINEL1 (SAFE)
driver reads one: manifest.safe pointing at one annotation, one calibration and one measurement
file per polarisation.

The calibration LUT's sigmaNought grows with the pixel column (A = LUT_BASE + column) and is the
same for every line, so the calibrated intensity GDAL must return is exactly DN^2 / A^2.
"""
import os
import zipfile

import numpy as np
from osgeo import gdal, osr

LUT_BASE = 400.0
START, STOP = "2021-06-01T05:30:10.000000", "2021-06-01T05:30:12.000000"
PRODUCT = "S1A_IW_GRDH_1SDV_20210601T053010_20210601T053012_038152_048102_ABCD.SAFE"


def digital_numbers(shape, seed):
    """GRD-like amplitudes (UInt16): a bright and a dark field under single-look speckle."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    reflectivity = np.where(np.arange(cols)[None, :] < cols // 2, 0.05, 0.01) * np.ones((rows, 1))
    intensity = reflectivity * rng.exponential(1.0, shape)
    # the driver's sigma0 = DN^2 / A^2; invert it with the LUT of each column
    dn = np.sqrt(intensity) * (LUT_BASE + np.arange(cols))[None, :]
    return np.clip(np.rint(dn), 1, 65535).astype(np.uint16)


def _gcps(shape, step=16):
    rows, cols = shape
    points = []
    for line in list(range(0, rows, step)) + [rows - 1]:
        for pixel in list(range(0, cols, step)) + [cols - 1]:
            points.append((line, pixel, 45.0 + 0.0002 * line, 7.0 + 0.0003 * pixel))
    return points


def _annotation(pol, shape, product_type, output_pixels):
    rows, cols = shape
    grid = "\n".join(
        f"      <geolocationGridPoint><azimuthTime>{START}</azimuthTime><slantRangeTime>0.005</slantRangeTime>"
        f"<line>{line}</line><pixel>{pixel}</pixel><latitude>{lat}</latitude><longitude>{lon}</longitude>"
        f"<height>0</height><incidenceAngle>35</incidenceAngle><elevationAngle>30</elevationAngle>"
        "</geolocationGridPoint>"
        for line, pixel, lat, lon in _gcps(shape))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<product>
  <adsHeader>
    <missionId>S1A</missionId>
    <productType>{product_type}</productType>
    <polarisation>{pol}</polarisation>
    <mode>IW</mode>
    <swath>IW</swath>
    <startTime>{START}</startTime>
    <stopTime>{STOP}</stopTime>
    <absoluteOrbitNumber>38152</absoluteOrbitNumber>
    <missionDataTakeId>295170</missionDataTakeId>
    <imageNumber>{1 if pol == "VH" else 2}</imageNumber>
  </adsHeader>
  <imageAnnotation>
    <imageInformation>
      <productFirstLineUtcTime>{START}</productFirstLineUtcTime>
      <productLastLineUtcTime>{STOP}</productLastLineUtcTime>
      <rangePixelSpacing>10</rangePixelSpacing>
      <azimuthPixelSpacing>10</azimuthPixelSpacing>
      <numberOfSamples>{cols}</numberOfSamples>
      <numberOfLines>{rows}</numberOfLines>
      <outputPixels>{output_pixels}</outputPixels>
    </imageInformation>
    <processingInformation>
      <ellipsoidName>WGS84</ellipsoidName>
      <ellipsoidSemiMajorAxis>6378137</ellipsoidSemiMajorAxis>
      <ellipsoidSemiMinorAxis>6356752.314245179</ellipsoidSemiMinorAxis>
    </processingInformation>
  </imageAnnotation>
  <geolocationGrid>
    <geolocationGridPointList count="{len(_gcps(shape))}">
{grid}
    </geolocationGridPointList>
  </geolocationGrid>
</product>
"""


def _calibration(pol, shape):
    rows, cols = shape
    pixels = list(range(0, cols, 8)) + ([cols - 1] if (cols - 1) % 8 else [])
    lut = " ".join(f"{LUT_BASE + p:.6f}" for p in pixels)
    pixel_list = " ".join(str(p) for p in pixels)
    lines = [-1, rows // 2, rows]  # vectors around the image so every line lies between two
    times = ["2021-06-01T05:30:09.990000", "2021-06-01T05:30:11.000000", "2021-06-01T05:30:12.010000"]
    vectors = "\n".join(
        f"""    <calibrationVector>
      <azimuthTime>{t}</azimuthTime>
      <line>{line}</line>
      <pixel count="{len(pixels)}">{pixel_list}</pixel>
      <sigmaNought count="{len(pixels)}">{lut}</sigmaNought>
      <betaNought count="{len(pixels)}">{lut}</betaNought>
      <gamma count="{len(pixels)}">{lut}</gamma>
      <dn count="{len(pixels)}">{lut}</dn>
    </calibrationVector>""" for t, line in zip(times, lines))
    # the driver reads the vector list only as the calibration element's last child
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<calibration>
  <adsHeader>
    <missionId>S1A</missionId>
    <productType>GRD</productType>
    <polarisation>{pol}</polarisation>
    <mode>IW</mode>
    <swath>IW</swath>
    <startTime>{START}</startTime>
    <stopTime>{STOP}</stopTime>
  </adsHeader>
  <calibrationInformation><absoluteCalibrationConstant>1</absoluteCalibrationConstant></calibrationInformation>
  <calibrationVectorList count="{len(lines)}">
{vectors}
  </calibrationVectorList>
</calibration>
"""


def _manifest(units):
    """units: (polarisation, annotation href, calibration href, measurement href)."""
    content, metadata, data = [], [], []
    for i, (pol, annotation, calibration, measurement) in enumerate(units, start=1):
        content.append(
            f'      <xfdu:contentUnit unitType="Measurement Data Unit" repID="s1Level1MeasurementSchema" '
            f'dmdID="products{i} calibration{i}"><dataObjectPointer dataObjectID="measurement{i}"/>'
            "</xfdu:contentUnit>")
        data.append(
            f'    <dataObject ID="measurement{i}" repID="s1Level1MeasurementSchema"><byteStream mimeType='
            f'"application/octet-stream"><fileLocation locatorType="URL" href="{measurement}"/></byteStream>'
            "</dataObject>")
        metadata.append(
            f'    <metadataObject ID="products{i}" classification="DESCRIPTION" category="DMD">'
            f'<dataObjectPointer dataObjectID="product{i}"/></metadataObject>')
        metadata.append(
            f'    <metadataObject ID="calibration{i}" classification="DESCRIPTION" category="DMD">'
            f'<dataObjectPointer dataObjectID="calibrationdata{i}"/></metadataObject>')
        data.append(
            f'    <dataObject ID="product{i}" repID="s1Level1ProductSchema"><byteStream mimeType="text/xml">'
            f'<fileLocation locatorType="URL" href="{annotation}"/></byteStream></dataObject>')
        data.append(
            f'    <dataObject ID="calibrationdata{i}" repID="s1Level1CalibrationSchema"><byteStream '
            f'mimeType="text/xml"><fileLocation locatorType="URL" href="{calibration}"/></byteStream></dataObject>')
    nl = "\n"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" xmlns:safe="http://www.esa.int/safe/sentinel-1.0" version="esa/safe/sentinel-1.0/sentinel-1/sar/level-1/standard/iwgrdh">
  <informationPackageMap>
    <xfdu:contentUnit unitType="SAFE Archive Information Package" textInfo="Sentinel-1 IW Level-1 GRD product">
{nl.join(content)}
    </xfdu:contentUnit>
  </informationPackageMap>
  <metadataSection>
{nl.join(metadata)}
  </metadataSection>
  <dataObjectSection>
{nl.join(data)}
  </dataObjectSection>
</xfdu:XFDU>
"""


def _write_measurement(path, dn):
    rows, cols = dn.shape
    ds = gdal.GetDriverByName("GTiff").Create(path, cols, rows, 1, gdal.GDT_UInt16)
    ds.GetRasterBand(1).WriteArray(dn)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds.SetGCPs([gdal.GCP(lon, lat, 0.0, pixel, line) for line, pixel, lat, lon in _gcps(dn.shape)], srs)
    ds = None


def build_safe(folder, shape=(64, 80), polarisations=("VV", "VH"), product_type="GRD",
               with_measurement=True, seed=5):
    """Writes a fake SAFE product folder under `folder`; returns (its path, {pol: DN array})."""
    root = os.path.join(str(folder), PRODUCT)
    for sub in ("annotation/calibration", "measurement"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    units, numbers = [], {}
    for k, pol in enumerate(polarisations):
        stem = f"s1a-iw-grd-{pol.lower()}-20210601t053010-20210601t053012-038152-048102-00{k + 1}"
        annotation, calibration = f"annotation/{stem}.xml", f"annotation/calibration/calibration-{stem}.xml"
        measurement = f"measurement/{stem}.tiff"
        output_pixels = "16 bit Signed Integer" if product_type == "SLC" else "16 bit Unsigned Integer"
        with open(os.path.join(root, annotation), "w") as f:
            f.write(_annotation(pol, shape, product_type, output_pixels))
        with open(os.path.join(root, calibration), "w") as f:
            f.write(_calibration(pol, shape))
        if with_measurement:
            numbers[pol] = digital_numbers(shape, seed + k)
            _write_measurement(os.path.join(root, measurement), numbers[pol])
        units.append((pol, annotation, calibration, measurement))  # listed even when its file is missing
    with open(os.path.join(root, "manifest.safe"), "w") as f:
        f.write(_manifest(units))
    return root, numbers


def zip_safe(root, zip_path):
    """The product zipped the way the Copernicus hubs deliver it: the .SAFE folder at the zip's top."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for dirpath, _, files in os.walk(root):
            for name in files:
                full = os.path.join(dirpath, name)
                z.write(full, os.path.join(os.path.basename(root), os.path.relpath(full, root)))
    return str(zip_path)


def expected_sigma0(dn):
    """The calibrated intensity GDAL's driver returns for these digital numbers."""
    lut = LUT_BASE + np.arange(dn.shape[1], dtype=np.float64)
    return dn.astype(np.float64) ** 2 / lut[None, :] ** 2
