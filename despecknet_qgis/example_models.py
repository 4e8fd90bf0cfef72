"""The example Processing models shipped in examples/models/ (written by tools/make_processing_models.py).

Each is added to the provider as despecknet:<file name> and shown under the model's own title; a
plain QgsProcessingModelAlgorithm would use its title as both, which makes an awkward id.
"""
import os

from qgis.core import QgsProcessingModelAlgorithm


class ExampleModel(QgsProcessingModelAlgorithm):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.loaded = self.fromFile(path)
        self.model_id = os.path.splitext(os.path.basename(path))[0]
        self.title = super().displayName()

    def name(self):
        return self.model_id

    def displayName(self):  # noqa: N802 - QGIS API
        return self.title

    def createInstance(self):  # noqa: N802 - QGIS API
        return ExampleModel(self.path)
