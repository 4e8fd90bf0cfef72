"""QGIS-free science of deSpeckNet: model, losses, training, export, tiled inference.

Nothing in this package imports QGIS. torch is imported only by the modules that
train or export (model, losses, training, export); inference needs numpy, GDAL and
ONNX Runtime alone.
"""
