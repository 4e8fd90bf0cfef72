"""What every deSpeckNet algorithm shares: core errors and feedback in QGIS terms."""
from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
)

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
    def progress_part(feedback, start: float, end: float) -> Progress:
        """Progress of one stage of a longer job, mapped onto start..end percent."""
        return Progress(report=lambda p: feedback.setProgress(start + (end - start) * p / 100.0),
                        is_cancelled=feedback.isCanceled, log=feedback.pushInfo)

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

    def gdal_source(self, layer, what="INPUT"):
        """The file behind a raster layer; deSpeckNet reads rasters through GDAL."""
        if layer is None or not layer.isValid():
            raise QgsProcessingException(
                f"{what} is not a readable raster layer: choose an existing GeoTIFF (or another raster GDAL "
                "reads) holding SAR intensity, amplitude or dB values."
            )
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{what} '{layer.name()}' comes from the '{layer.providerType()}' provider; deSpeckNet reads "
                "files through GDAL. Save the layer as a GeoTIFF first."
            )
        return layer.source()

    def add_number(self, name, label, default, advanced=False, integer=False, minimum=0.0, maximum=None):
        kind = QgsProcessingParameterNumber.Integer if integer else QgsProcessingParameterNumber.Double
        param = QgsProcessingParameterNumber(name, self.tr(label), kind, default, minValue=minimum)
        if maximum is not None:
            param.setMaximum(maximum)
        if advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)

    def tr(self, text):
        return text


def geometries_in_crs(source, crs, context):
    """(feature id, geometry) of a feature source's non-empty features, reprojected to `crs`."""
    from qgis.core import QgsCoordinateTransform

    transform = QgsCoordinateTransform(source.sourceCrs(), crs, context.transformContext())
    for feature in source.getFeatures():
        geom = feature.geometry()
        if geom.isEmpty():
            continue
        if source.sourceCrs() != crs:
            geom.transform(transform)
        yield feature.id(), geom


def add_training_parameters(alg, lr, stride, validation, advanced_lr):
    """PATCH_SIZE, STRIDE, BATCH_SIZE, LEARNING_RATE, SEED, VALIDATION_FRACTION: shared by train and finetune."""
    alg.add_number("PATCH_SIZE", "Patch size (pixels)", 40, integer=True, minimum=8)
    alg.add_number("STRIDE", "Stride between patches (pixels)", stride, advanced=True, integer=True, minimum=1)
    alg.add_number("BATCH_SIZE", "Batch size", 128, integer=True, minimum=1)
    alg.add_number("LEARNING_RATE", "Learning rate", lr, advanced=advanced_lr, minimum=1e-8)
    alg.add_number("SEED", "Random seed", 0, integer=True)
    alg.add_number("VALIDATION_FRACTION", "Fraction held out for validation", validation, advanced=True, maximum=0.9)


def training_arguments(alg, parameters, context) -> dict:
    return {
        "patch": alg.parameterAsInt(parameters, "PATCH_SIZE", context),
        "stride": alg.parameterAsInt(parameters, "STRIDE", context),
        "batch_size": alg.parameterAsInt(parameters, "BATCH_SIZE", context),
        "lr": alg.parameterAsDouble(parameters, "LEARNING_RATE", context),
        "seed": alg.parameterAsInt(parameters, "SEED", context),
        "validation_fraction": alg.parameterAsDouble(parameters, "VALIDATION_FRACTION", context),
    }
