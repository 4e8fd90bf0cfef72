"""despecknet:classicfilter - boxcar, Lee, Kuan, refined Lee, Lee sigma, Gamma-MAP and Frost, to compare with deSpeckNet."""
from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core import classic_filters as cf
from ..core.defaults import RANGES, TILE_RANGE, TILE_SIZE
from ..core.domain import DOMAINS
from .base import DOMAIN_LABELS, DespeckNetAlgorithm


class ClassicFilterAlgorithm(DespeckNetAlgorithm):
    INPUT, BAND, INPUT_DOMAIN, METHOD = "INPUT", "BAND", "INPUT_DOMAIN", "METHOD"
    WINDOW_SIZE, LOOKS, DAMPING, SIGMA, TILE_SIZE, OUTPUT = "WINDOW_SIZE", "LOOKS", "DAMPING", "SIGMA", "TILE_SIZE", "OUTPUT"
    ARGUMENTS = {"method": "METHOD", "window_size": "WINDOW_SIZE", "looks": "LOOKS", "damping": "DAMPING",
                 "sigma": "SIGMA"}

    def name(self):
        return "classicfilter"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Classic speckle filter (Lee, refined Lee, Lee sigma, Gamma-MAP, Frost, Kuan, boxcar)")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "The adaptive speckle filters SNAP users know, to compare with deSpeckNet on the same image "
            "(for example with Speckle statistics on the same polygons).<br><br>"
            "<b>Method</b>: boxcar (window mean); Lee (1980, weight 1 - Cu²/Ci², as in SNAP and OTB: bright points "
            "kept); Kuan (1985, the same divided by 1 + Cu²: smoother, halves bright points on 1-look data); refined Lee (Lee 1981, 7x7 window, statistics on "
            "the edge-aligned half closest to the centre); Lee sigma (improved sigma filter, Lee et al. 2009, "
            "without its separate point-target step); Gamma-MAP (Lopes et al. 1990); Frost (1982, damping "
            f"factor K). Refined Lee and Lee sigma use Kuan's weight, as SNAP does. Names are accepted too: METHOD=lee, METHOD=gamma_map.<br>"
            f"<b>Window size</b>: odd, {cf.WINDOW_RANGE.describe()} pixels (default {cf.WINDOW_SIZE}; refined Lee "
            "needs 7).<br>"
            "<b>Looks</b>: the speckle's equivalent number of looks (Sentinel-1 GRD about 4.4, SLC 1); 0 estimates "
            "it per band from its flattest areas, as Despeckle does. Boxcar and Frost do not use it.<br>"
            "Works on intensity, amplitude or dB like Despeckle; the output is in the same domain. Nodata stays "
            "nodata and is never averaged into its neighbours; CRS and georeferencing are kept. Rasters of any size "
            f"are processed in windows ({TILE_RANGE.describe()} pixels; the result does not depend on it); "
            "the output appears only once complete."
        )

    def enum_names(self):
        return {**super().enum_names(), self.METHOD: list(cf.METHODS)}

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("SAR raster")))
        self.addParameter(QgsProcessingParameterBand(self.BAND, self.tr("Band(s) (empty: all)"), None, self.INPUT,
                                                     optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, self.tr("Filter"), list(cf.METHOD_LABELS),
                                                     defaultValue=cf.METHODS.index("lee")))
        self.add_number(self.WINDOW_SIZE, "Window size, pixels (odd)", cf.WINDOW_SIZE, integer=True,
                        allowed=cf.WINDOW_RANGE)
        self.add_number(self.LOOKS, "Looks (0: estimate from the image)", 0.0,
                        allowed=RANGES["looks"])
        self.add_number(self.DAMPING, "Frost damping factor K", cf.DAMPING, advanced=True, allowed=cf.DAMPING_RANGE)
        self.add_number(self.SIGMA, "Lee sigma probability", cf.SIGMA, advanced=True,
                        allowed=cf.SIGMA_RANGE)
        self.add_number(self.TILE_SIZE, "Processing window, pixels", TILE_SIZE, advanced=True, integer=True,
                        allowed=TILE_RANGE)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Filtered")))

    def check_values(self, parameters, context):
        message = super().check_values(parameters, context)
        if message:
            return message
        window = parameters.get(self.WINDOW_SIZE)
        try:
            window = int(float(window)) if window is not None else cf.WINDOW_SIZE
        except (TypeError, ValueError):
            return None  # an expression: checked by the core when it runs
        method_value = parameters.get(self.METHOD, cf.METHODS.index("lee"))
        index = self._enum_index(self.METHOD, method_value)
        method = cf.METHODS[index] if index is not None else "lee"
        try:
            cf.check_arguments(method, window, None, cf.DAMPING, cf.SIGMA)
        except cf.InputError as exc:
            return self.message(exc)
        return None

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layer = self.raster_layer(parameters, self.INPUT, context, feedback=feedback)
        source = self.gdal_source(layer, f"INPUT {parameters.get(self.INPUT)!r}")
        method = cf.METHODS[self.parameterAsEnum(parameters, self.METHOD, context)]
        looks = self.parameterAsDouble(parameters, self.LOOKS, context) or None
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        report = self.run_core(
            cf.classic_filter_raster, source, output,
            method=method,
            bands=self.parameterAsInts(parameters, self.BAND, context) or None,
            domain=DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)],
            window_size=self.parameterAsInt(parameters, self.WINDOW_SIZE, context),
            looks=looks,
            damping=self.parameterAsDouble(parameters, self.DAMPING, context),
            sigma=self.parameterAsDouble(parameters, self.SIGMA, context),
            tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
            progress=self.progress(feedback),
        )
        if not report.output:
            raise QgsProcessingException("The filter wrote no output.")
        feedback.pushInfo(f"{method}: {report.tiles} window(s) in {report.seconds:.1f} s")
        return {self.OUTPUT: output}
