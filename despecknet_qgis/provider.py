"""Processing provider `despecknet`."""
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms.classic_filter import ClassicFilterAlgorithm
from .algorithms.despeckle import DespeckleAlgorithm
from .algorithms.despeckle_batch import DespeckleBatchAlgorithm
from .algorithms.finetune import FineTuneAlgorithm
from .algorithms.quality import QualityAlgorithm
from .algorithms.speckle_stats import SpeckleStatsAlgorithm
from .algorithms.temporal_label import TemporalLabelAlgorithm
from .algorithms.train import TrainAlgorithm
from .core.raster import RASTER_OUTPUT_EXTENSIONS

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")
# Example Processing models (tools/make_processing_models.py writes them), added as despecknet:<file name>.
MODELS_DIR = os.path.join(os.path.dirname(__file__), "examples", "models")


class DespeckNetProvider(QgsProcessingProvider):
    def id(self):
        return "despecknet"

    def name(self):
        return "deSpeckNet"

    def longName(self):  # noqa: N802 - QGIS API
        return "deSpeckNet SAR despeckling"

    def icon(self):
        return QIcon(ICON)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 - QGIS API
        return list(RASTER_OUTPUT_EXTENSIONS)  # dialogs offer only what the core writes (core/raster.driver_for)

    def loadAlgorithms(self):  # noqa: N802 - QGIS API
        for alg in (DespeckleAlgorithm(), TemporalLabelAlgorithm(), TrainAlgorithm(), FineTuneAlgorithm(),
                    SpeckleStatsAlgorithm(), QualityAlgorithm(), DespeckleBatchAlgorithm(), ClassicFilterAlgorithm()):
            self.addAlgorithm(alg)
        self.load_models()

    def load_models(self):
        """Add the shipped .model3 files; one that does not load is logged and skipped, never fatal."""
        from qgis.core import Qgis, QgsApplication, QgsMessageLog

        from .example_models import ExampleModel

        registry = QgsApplication.processingRegistry()
        if registry.providerById(self.id()) is not self and self._reload is None:
            # A model finds its child algorithms (ours) in the registry, which holds this provider only once
            # loadAlgorithms has returned: load again then, or the models would lack their outputs.
            self._reload = registry.providerAdded.connect(self._added)
        for name in sorted(os.listdir(MODELS_DIR)) if os.path.isdir(MODELS_DIR) else []:
            if name.endswith(".model3"):
                model = ExampleModel(os.path.join(MODELS_DIR, name))
                if model.loaded:
                    self.addAlgorithm(model)
                else:
                    QgsMessageLog.logMessage(f"Could not load the example model {name}", "deSpeckNet",
                                             Qgis.MessageLevel.Warning)

    _reload = None

    def _added(self, provider_id):
        from qgis.core import QgsApplication

        if provider_id == self.id() and QgsApplication.processingRegistry().providerById(provider_id) is self:
            QgsApplication.processingRegistry().providerAdded.disconnect(self._reload)
            self.refreshAlgorithms()
