"""The QGIS plugin object: registers the Processing provider (headless too)."""
from qgis.core import QgsApplication

from .provider import DespeckNetProvider


class DespeckNetPlugin:
    def __init__(self, iface):
        # iface is None under qgis_process: nothing here may need a map canvas.
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS API
        if self.provider is None:
            self.provider = DespeckNetProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
