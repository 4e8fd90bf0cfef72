"""The example Processing models shipped in examples/models/ (written by tools/make_processing_models.py).

Each is added to the provider as despecknet:<file name> and shown under the model's own title; a
plain QgsProcessingModelAlgorithm would use its title as both, which makes an awkward id. Help
button, tags and icon are those of the plugin's other algorithms.
"""
import configparser
import os

from qgis.core import QgsProcessingModelAlgorithm
from qgis.PyQt.QtGui import QIcon

HERE = os.path.dirname(os.path.abspath(__file__))
ICON = os.path.join(HERE, "icon.svg")
README_ANCHOR = "#example-models-sample-data-and-a-pyqgis-script"
TAGS = ["model", "example", "chain", "sar", "radar", "speckle", "despeckle", "speckle filter", "denoise", "sentinel"]


def _homepage() -> str:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(HERE, "metadata.txt"), encoding="utf8")
    return parser.get("general", "homepage", fallback="")


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
        home = _homepage()
        return f"{home}{README_ANCHOR}" if home else ""

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802 - QGIS API
        return ICON

    def createInstance(self):  # noqa: N802 - QGIS API
        return ExampleModel(self.path)
