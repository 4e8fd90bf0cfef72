"""despecknet:despeckle - despeckle a SAR raster of any size with an ONNX deSpeckNet model."""
from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core.defaults import RANGES, TILE_RANGE, TILE_SIZE, Range
from ..core.domain import DOMAINS
from ..core.inference import DEVICES, PRECISIONS, Despeckler
from ..core.model_info import RECEPTIVE_RADIUS
from ..core.tiled_predict import despeckle_raster
from . import output_options
from .base import DOMAIN_LABELS, DespeckNetAlgorithm


class DespeckleAlgorithm(DespeckNetAlgorithm):
    INPUT = "INPUT"
    BAND = "BAND"
    INPUT_DOMAIN = "INPUT_DOMAIN"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"
    SELF_ENSEMBLE = "SELF_ENSEMBLE"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    POINT_TARGETS = "POINT_TARGETS"
    LOOKS = "LOOKS"
    OUTPUT = "OUTPUT"
    OUTPUT_NOISE = "OUTPUT_NOISE"
    PROVIDER = "PROVIDER"
    ARGUMENTS = {"noise_path": "OUTPUT_NOISE", "point_targets": "POINT_TARGETS", "looks": "LOOKS",
                 **output_options.ARGUMENTS}

    def name(self):
        return "despeckle"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Despeckle SAR image")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "Removes speckle from a SAR intensity, amplitude or dB image with a deSpeckNet model "
            "(two CNN branches estimating the clean image and the speckle).<br><br>"
            "<b>Input domain</b>: what the pixel values are; the output is in the same domain (or the "
            "output domain chosen) and the same calibration (any scale works).<br>"
            "<b>Band</b>: empty means every band, each despeckled on its own.<br>"
            "<b>Model</b>: an ONNX file from deSpeckNet training or fine-tuning; empty means the "
            "bundled models (see their model card): the multi-look one for bands with 3 looks or more "
            "as estimated on their flattest areas (GRD), the general one otherwise. The log names each "
            "band's model.<br>"
            "<b>Device</b>: auto uses an NVIDIA GPU when ONNX Runtime can, else the CPU; cuda fails "
            "rather than silently using the CPU.<br>"
            "<b>Estimated speckle</b>: optional raster of N̂ (mean about 1), in the output's domain.<br>"
            "<b>Keep point targets</b> (default on): pixels brighter than the 5x5 median of the despeckled "
            "image by more than speckle explains (false-alarm rate 1e-5 per pixel, with the looks estimated "
            "from the band's flattest areas, or LOOKS) keep their measured value: the network alone shrinks "
            "bright scatterers. The log and each band's DESPECKNET_POINT_TARGETS_RESTORED say how many pixels. "
            "Off gives the network's output as it is.<br>"
            "<b>Looks</b> (0: estimated per band): the equivalent number of looks, for the model choice and "
            "the point-target test; give it where a band has no flat area to estimate it from.<br>"
            f"<b>Tile size</b>: {TILE_RANGE.describe()} pixels; the result does not depend on it, memory does "
            "(about 0.8 KB per pixel of a tile with its margins, twice that with the speckle output), and a tile "
            "that would take more than half the available memory is refused.<br>"
            + output_options.HELP + output_options.EXTENT_HELP +
            "Rasters of any size are processed tile by tile; nodata stays nodata. Outputs appear only once "
            "complete and read back intact; a file already at an output path is replaced only then."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("SAR raster")))
        self.addParameter(
            QgsProcessingParameterBand(
                self.BAND, self.tr("Band(s) (empty: all)"), None, self.INPUT, optional=True, allowMultiple=True
            )
        )
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS, defaultValue=0))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, self.tr("Model (ONNX; empty: bundled)"), extension="onnx", optional=True
            )
        )
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), list(DEVICES), defaultValue=0))
        self.add_advanced(QgsProcessingParameterEnum(self.PRECISION, self.tr("Precision"), list(PRECISIONS),
                                                     defaultValue=0))
        self.add_advanced(QgsProcessingParameterBoolean(
            self.SELF_ENSEMBLE, self.tr("Self-ensemble (4 mirrored passes)"), defaultValue=False))
        self.add_number(self.TILE_SIZE, "Tile size, pixels", TILE_SIZE, advanced=True, integer=True, allowed=TILE_RANGE)
        self.add_number(self.OVERLAP, "Tile overlap, pixels", RECEPTIVE_RADIUS + 3, advanced=True, integer=True,
                        allowed=Range(RECEPTIVE_RADIUS, TILE_RANGE.maximum))
        self.add_advanced(QgsProcessingParameterBoolean(self.POINT_TARGETS, self.tr("Keep point targets"),
                                                        defaultValue=True))
        self.add_number(self.LOOKS, "Looks (0: estimate per band)", 0.0, advanced=True,
                        allowed=RANGES["looks"])
        output_options.add_output_parameters(self, extent=True)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Despeckled")))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_NOISE, self.tr("Estimated speckle"), optional=True, createByDefault=False
            )
        )
        self.addOutput(QgsProcessingOutputString(self.PROVIDER, self.tr("ONNX Runtime execution provider used")))
        self.addOutput(QgsProcessingOutputString(self.PRECISION, self.tr("Precision used (fp32 or bf16)")))

    def input_layer(self, parameters, context, calibrate=True, feedback=None):
        layer = self.raster_layer(parameters, self.INPUT, context, calibrate, feedback)
        self.gdal_source(layer, f"INPUT {parameters.get(self.INPUT)!r}")
        return layer

    def check_values(self, parameters, context):
        message = super().check_values(parameters, context)
        if message:
            return message
        # QGIS's own message for an unloadable INPUT does not say what to do.
        try:
            self.input_layer(parameters, context, calibrate=False)
        except QgsProcessingException as exc:
            return str(exc)
        return None

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layer = self.input_layer(parameters, context, feedback=feedback)
        source = layer.source()
        bands = self.parameterAsInts(parameters, self.BAND, context) or None
        domain = DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)]
        model = self.parameterAsFile(parameters, self.MODEL, context) or None
        device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]
        precision = PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)]
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        noise = self.parameterAsOutputLayer(parameters, self.OUTPUT_NOISE, context) or None
        looks = self.parameterAsDouble(parameters, self.LOOKS, context) or None

        despeckler = self.run_core(Despeckler, model, device, with_noise=noise is not None, precision=precision,
                                   self_ensemble=self.parameterAsBool(parameters, self.SELF_ENSEMBLE, context))
        feedback.pushInfo(f"Model {despeckler.path} (version {despeckler.info.version}) on {despeckler.provider}, "
                          f"precision {despeckler.precision}: {despeckler.precision_note}")
        report = self.run_core(
            despeckle_raster,
            source,
            output,
            despeckler,
            bands=bands,
            domain=domain,
            tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
            overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
            noise_path=noise,
            progress=self.progress(feedback),
            point_targets=self.parameterAsBool(parameters, self.POINT_TARGETS, context),
            looks=looks,
            **output_options.output_arguments(self, parameters, context, layer),
        )
        for b, name in zip(report.bands, report.models):
            estimated = f"{b.looks:.2f}" if b.looks else "unknown (no fully valid 16x16 block)"
            feedback.pushInfo(f"band {b.band}: equivalent number of looks {estimated}, model {name}")
        if looks:
            feedback.pushInfo(f"LOOKS = {looks:g} given: used for every band's model choice and point-target test")
        # what was written (an EXTENT's window), not the band's valid pixels that the statistics pass counts
        mpix = report.pixels * len(report.bands) / 1e6
        feedback.pushInfo(f"{report.tiles} tile(s), {mpix:.4f} Mpixel in {report.seconds:.1f} s on {report.provider} "
                          f"({report.precision})")
        results = {self.OUTPUT: output, self.PROVIDER: report.provider, self.PRECISION: report.precision}
        if noise:
            results[self.OUTPUT_NOISE] = noise
        return results
