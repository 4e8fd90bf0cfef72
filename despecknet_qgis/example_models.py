"""The example Processing models shipped in examples/models/ (written by tools/make_processing_models.py).

Each is added to the provider as despecknet:<file name> and shown under the model's own title; a
plain QgsProcessingModelAlgorithm would use its title as both, which makes an awkward id. The Help
button opens the README's example section; the search words are the other algorithms' common ones;
the icon is the plugin's.
"""
import os

from qgis.core import QgsProcessingModelAlgorithm
from qgis.PyQt.QtGui import QIcon

from .algorithms.parameter_help import COMMON_TAGS, README_URL

ICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icon.svg")
README_ANCHOR = "example-models-sample-data-and-a-pyqgis-script"  # GitHub's slug of the README section
TAGS = list(COMMON_TAGS) + ["model", "example", "chain", "workflow"]


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

    def tags(self):
        return TAGS + self.model_id.split("_")

    def helpUrl(self):  # noqa: N802 - QGIS API
        return f"{README_URL}#{README_ANCHOR}"

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802 - QGIS API
        return ICON

    def createInstance(self):  # noqa: N802 - QGIS API
        return ExampleModel(self.path)
