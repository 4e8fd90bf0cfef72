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

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class DespeckNetProvider(QgsProcessingProvider):
    def id(self):
        return "despecknet"

    def name(self):
        return "deSpeckNet"

    def longName(self):  # noqa: N802 - QGIS API
        return "deSpeckNet SAR despeckling"

    def icon(self):
        return QIcon(ICON)

    def loadAlgorithms(self):  # noqa: N802 - QGIS API
        for alg in (DespeckleAlgorithm(), TemporalLabelAlgorithm(), TrainAlgorithm(), FineTuneAlgorithm(),
                    SpeckleStatsAlgorithm(), QualityAlgorithm(), DespeckleBatchAlgorithm(), ClassicFilterAlgorithm()):
            self.addAlgorithm(alg)
