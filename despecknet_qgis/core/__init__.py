"""QGIS-free science of deSpeckNet: model, losses, training, export, tiled inference.

Nothing in this package imports QGIS. torch is imported only by the modules that
train or export (model, training, export, and phases when it runs); inference needs
numpy, GDAL and ONNX Runtime alone, so the plugin loads without importing torch.
"""
