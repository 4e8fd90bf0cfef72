"""What every deSpeckNet algorithm shares: core errors and feedback in QGIS terms."""
from qgis.core import QgsProcessingAlgorithm, QgsProcessingException

from ..core.domain import DOMAINS
from ..core.errors import DespeckNetError
from ..core.progress import Progress

DOMAIN_LABELS = [
    "Intensity (linear power: sigma0, beta0, DN²)",
    "Amplitude (square root of intensity)",
    "Decibel (10·log10 of intensity)",
]
assert len(DOMAIN_LABELS) == len(DOMAINS)


class DespeckNetAlgorithm(QgsProcessingAlgorithm):
    def group(self):
        return self.tr("deSpeckNet")

    def groupId(self):  # noqa: N802 - QGIS API
        return "despecknet"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    @staticmethod
    def progress(feedback) -> Progress:
        if feedback is None:
            return Progress()
        return Progress(report=feedback.setProgress, is_cancelled=feedback.isCanceled, log=feedback.pushInfo)

    @staticmethod
    def run_core(call, *args, **kwargs):
        """Run a core function; its errors become QgsProcessingException with the same message."""
        try:
            return call(*args, **kwargs)
        except DespeckNetError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except ImportError as exc:
            raise QgsProcessingException(
                f"A Python package deSpeckNet needs is missing from QGIS's Python ({exc}). "
                "Install numpy, onnxruntime (and torch for training) into the Python QGIS uses; see the README."
            ) from exc
        except MemoryError as exc:
            raise QgsProcessingException("Out of memory: lower TILE_SIZE and try again.") from exc

    def tr(self, text):
        return text
