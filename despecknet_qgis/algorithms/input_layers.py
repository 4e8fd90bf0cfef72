"""Raster inputs QGIS 3.22 does not load from a string, as layers the algorithms read through GDAL.

- Sentinel-1 SAFE products (the .SAFE folder, its zip, its manifest.safe, a
  `SENTINEL1_CALIB:…` name, or a project layer QGIS opened on one): the layer of their
  calibrated sigma0 (core/sentinel1.py), written once per product into the Processing
  temporary folder.
- GDAL dataset names that are not plain files (/vsizip/, /vsicurl/, sub-datasets): the layer
  GDAL opens, which QGIS 3.22's loader refuses.
"""
import os

from qgis.core import QgsProcessingException, QgsProcessingUtils, QgsRasterLayer

from ..core.errors import DespeckNetError
from ..core.raster import gdal_can_open
from ..core.sentinel1 import calibrated_raster, grd_measurements, is_sentinel1_input, manifest_path, product_of


def sentinel1_problem(value, name):
    """What is wrong with a Sentinel-1 product given as `name`, or None (cheap: reads its XML only)."""
    try:
        source, swath, polarisation, _ = product_of(value)
        grd_measurements(source, polarisation, swath)
    except DespeckNetError as exc:
        return f"{name}: {exc}"
    return None


def gdal_layer(value, name="INPUT", context=None, calibrate=True, progress=None):
    """The raster layer of a Sentinel-1 product or of a GDAL dataset name; None for anything else.
    With a context, the context owns the layer, as it owns the layers QGIS loads.

    `calibrate` False (the parameter checks, which QGIS's dialog runs in its GUI thread): a
    product's own layer of digital numbers, checked but not calibrated; calibrating a full
    GRD takes tens of seconds and belongs to the run, in its background task, where `progress`
    (core.progress.Progress) shows it and can cancel it."""
    layer = (_layer(value, name, progress) if calibrate or not is_sentinel1_input(value)
             else _uncalibrated_layer(value, name))
    if layer is not None and context is not None:
        context.temporaryLayerStore().addMapLayer(layer)
    return layer


def calibrated_if_sentinel1(layer, name="INPUT", context=None, calibrate=True, progress=None):
    """A layer QGIS opened on a Sentinel-1 product (its manifest.safe, or an UNCALIB sub-dataset
    chosen when the product was added to the project) gives way to the layer of its calibrated sigma0."""
    if layer is None or layer.providerType() != "gdal" or not is_sentinel1_input(layer.source()):
        return layer
    return gdal_layer(layer.source(), name, context, calibrate, progress)


def _uncalibrated_layer(value, name):
    """The product's digital numbers as QGIS opens them, for the checks; its problems as a message."""
    problem = sentinel1_problem(value, name)
    if problem:
        raise QgsProcessingException(problem)
    try:
        product = product_of(value)[0]
        source = manifest_path(product)
    except DespeckNetError as exc:
        raise QgsProcessingException(f"{name}: {exc}") from exc
    return QgsRasterLayer(source, os.path.basename(product.rstrip("/\\")) or product, "gdal")


def _layer(value, name, progress=None):
    if not isinstance(value, str) or not value:
        return None
    if is_sentinel1_input(value):
        try:
            path = calibrated_raster(value, os.path.join(QgsProcessingUtils.tempFolder(), "sentinel1"), progress)
        except DespeckNetError as exc:
            raise QgsProcessingException(f"{name}: {exc}") from exc
        label = os.path.basename(value.rstrip("/\\")) or value
        return QgsRasterLayer(path, f"{label} sigma0", "gdal")
    if gdal_can_open(value):
        return QgsRasterLayer(value, os.path.basename(value.rstrip("/")) or value, "gdal")
    return None
