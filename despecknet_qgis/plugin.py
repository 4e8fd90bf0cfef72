"""The QGIS plugin object: registers the Processing provider (headless too) and, with a GUI, the map tool."""
import os

from qgis.core import QgsApplication

from .provider import DespeckNetProvider


class DespeckNetPlugin:
    def __init__(self, iface):
        # iface is None under qgis_process: nothing here may need a map canvas.
        self.iface = iface
        self.provider = None
        self.action = None
        self.tool = None
        self.domain_box = None
        self.toolbar = None

    def initProcessing(self):  # noqa: N802 - QGIS API
        registry = QgsApplication.processingRegistry()
        # Another copy of the plugin may hold the id already: QGIS would refuse (and delete) ours.
        if self.provider is None and registry.providerById("despecknet") is None:
            provider = DespeckNetProvider()
            if registry.addProvider(provider):
                self.provider = provider

    def initGui(self):  # noqa: N802 - QGIS API
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction, QComboBox

        from .core.domain import DOMAINS
        from .gui.homogeneous_area_tool import HomogeneousAreaTool

        canvas = self.iface.mapCanvas()
        self.toolbar = self.iface.addToolBar("deSpeckNet")
        self.action = QAction(QIcon(os.path.join(os.path.dirname(__file__), "icon.svg")),
                              "ENL / Cx of a homogeneous area", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.domain_box = QComboBox()
        self.domain_box.addItems(list(DOMAINS))
        self.domain_box.setToolTip("What the raster values are (statistics are computed on intensity)")
        self.tool = HomogeneousAreaTool(canvas, self.domain_box.currentText, self.iface.messageBar())
        self.tool.setAction(self.action)
        self.action.triggered.connect(lambda checked: canvas.setMapTool(self.tool) if checked else canvas.unsetMapTool(self.tool))
        self.toolbar.addAction(self.action)
        self.toolbar.addWidget(self.domain_box)
        self.iface.addPluginToRasterMenu("deSpeckNet", self.action)

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.iface is not None and self.action is not None:
            self.iface.mapCanvas().unsetMapTool(self.tool)
            self.iface.removePluginRasterMenu("deSpeckNet", self.action)
            if self.toolbar is not None:
                self.toolbar.deleteLater()
            self.action = self.tool = self.toolbar = None
