"""The QGIS plugin object: registers the Processing provider (headless too) and, with a GUI, the map tool.

On load it puts the plugin's own package folder on sys.path (core/dependencies.py) and
checks the Python packages. Headless, the provider loads whatever is missing (each
algorithm then says what it lacks before any work); in the desktop a message bar offers
to install what is missing (gui/dependency_installer.py).
"""
import os

from qgis.core import Qgis, QgsApplication, QgsMessageLog

from .core import dependencies

LOG_TAG = "deSpeckNet"


class DespeckNetPlugin:
    def __init__(self, iface):
        # iface is None under qgis_process: nothing here may need a map canvas.
        self.iface = iface
        self.provider = None
        self.action = None
        self.tool = None
        self.domain_box = None
        self.band_box = None
        self.toolbar = None
        self.missing = []
        self.installer = None
        self.message = None
        dependencies.activate_packages_dir()

    def initProcessing(self):  # noqa: N802 - QGIS API
        registry = QgsApplication.processingRegistry()
        # Another copy of the plugin may hold the id already: QGIS would refuse (and delete) ours.
        if self.provider is not None or registry.providerById("despecknet") is not None:
            return
        self.missing = dependencies.missing("all")
        if any(r.module == "numpy" for r in self.missing):
            # Without a usable numpy no algorithm can even be imported: say so instead of failing to load.
            QgsMessageLog.logMessage(dependencies.describe(self.missing, "deSpeckNet"), LOG_TAG, Qgis.MessageLevel.Critical)
            return
        if self.missing:
            QgsMessageLog.logMessage(dependencies.describe(self.missing, "Part of deSpeckNet"), LOG_TAG,
                                     Qgis.MessageLevel.Warning)
        from .provider import DespeckNetProvider

        provider = DespeckNetProvider()
        if registry.addProvider(provider):
            self.provider = provider

    def initGui(self):  # noqa: N802 - QGIS API
        self.initProcessing()
        if self.iface is None:
            return
        if self.missing:
            self.offer_install()
        if any(r.module == "numpy" for r in self.missing):
            return
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QComboBox, QSpinBox

        try:
            from qgis.PyQt.QtGui import QAction  # Qt6 (QGIS 4)
        except ImportError:
            from qgis.PyQt.QtWidgets import QAction  # Qt5 (QGIS 3)

        from .core.domain import DOMAINS
        from .gui.homogeneous_area_tool import HomogeneousAreaTool

        canvas = self.iface.mapCanvas()
        self.toolbar = self.iface.addToolBar("deSpeckNet")
        self.toolbar.setObjectName("deSpeckNetToolbar")  # QGIS saves and restores where the user put it
        self.action = QAction(QIcon(os.path.join(os.path.dirname(__file__), "icon.svg")),
                              "ENL / Cx of a homogeneous area", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.domain_box = QComboBox()
        self.domain_box.addItems(list(DOMAINS))
        self.domain_box.setToolTip("What the raster values are (statistics are computed on intensity)")
        self.band_box = QSpinBox()
        self.band_box.setRange(1, 65535)
        self.band_box.setPrefix("Band ")
        self.band_box.setToolTip("The band of each visible raster the statistics are computed on (rasters with "
                                 "fewer bands are left out)")
        self.tool = HomogeneousAreaTool(canvas, self.domain_box.currentText, self.iface.messageBar(),
                                        band_getter=self.band_box.value)
        self.tool.setAction(self.action)
        self.action.triggered.connect(lambda checked: canvas.setMapTool(self.tool) if checked else canvas.unsetMapTool(self.tool))
        self.toolbar.addAction(self.action)
        self.toolbar.addWidget(self.domain_box)
        self.toolbar.addWidget(self.band_box)
        self.iface.addPluginToRasterMenu("deSpeckNet", self.action)

    def offer_install(self):
        """A message bar item naming the missing packages, with a button that opens the installer."""
        from qgis.PyQt.QtWidgets import QPushButton

        names = ", ".join(r.pip for r in self.missing)
        bar = self.iface.messageBar()
        self.message = bar.createMessage("deSpeckNet", f"Python packages missing: {names}.")
        button = QPushButton("Install…", self.message)
        button.clicked.connect(self.open_installer)
        self.message.layout().addWidget(button)
        bar.pushWidget(self.message, Qgis.MessageLevel.Warning)

    def open_installer(self):
        from .gui.dependency_installer import DependencyInstaller

        if self.installer is not None:  # one dialog, so one pip run into the folder at a time
            try:
                self.installer.show()
                self.installer.raise_()
                return self.installer
            except RuntimeError:  # its C++ object is gone
                self.installer = None
        self.installer = DependencyInstaller(self.missing, self.iface.mainWindow())
        self.installer.show()
        return self.installer

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.installer is not None:
            self.installer.close()
            self.installer = None
        if self.iface is not None and self.message is not None:
            try:  # the "Install..." message of this instance: its button would open an unloaded plugin's dialog
                self.iface.messageBar().popWidget(self.message)
            except RuntimeError:  # already closed by the user
                pass
            self.message = None
        if self.iface is not None and self.action is not None:
            self.iface.mapCanvas().unsetMapTool(self.tool)
            self.iface.removePluginRasterMenu("deSpeckNet", self.action)
            if self.toolbar is not None:
                self.toolbar.deleteLater()
            # parented to the main window and the canvas: without this each reload left one more behind
            self.iface.mapCanvas().scene().removeItem(self.tool.band)  # a canvas item, not a child QObject
            self.tool.deleteLater()
            self.action.deleteLater()
            self.action = self.tool = self.toolbar = None
