"""despecknet:temporallabel - a clean reference label from a stack of co-registered dates."""
from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
)

from ..core.domain import DOMAINS
from ..core.temporal_label import DEFAULT_RULE, RULES, temporal_label
from .base import DOMAIN_LABELS, DespeckNetAlgorithm

# Same order as core RULES: new rules go at the end so that saved enum indices keep their meaning.
# Short, to fit the dialog; the STABILITY help (parameter_help.py) explains each rule.
RULE_LABELS = [
    "Speckle test, per pixel",
    "dB standard deviation <= threshold",
    "Paper: standard deviation <= nu",
    "Omnibus change test + trend (recommended)",
]


class TemporalLabelAlgorithm(DespeckNetAlgorithm):
    INPUTS, BAND, INPUT_DOMAIN = "INPUTS", "BAND", "INPUT_DOMAIN"
    STABILITY, THRESHOLD, LOOKS, ALPHA, MULTILOOK = "STABILITY", "THRESHOLD", "LOOKS", "ALPHA", "MULTILOOK"
    TEST_WINDOW = "TEST_WINDOW"
    OUTPUT, OUTPUT_MASK, STABLE_FRACTION, ESTIMATED_LOOKS = "OUTPUT", "OUTPUT_MASK", "STABLE_FRACTION", "ESTIMATED_LOOKS"
    # A date given twice would look stable to every rule. OUTPUT and OUTPUT_MASK, like every
    # output, are checked against the inputs and each other by DespeckNetAlgorithm.check_values.
    UNIQUE_LAYERS = (INPUTS,)
    ARGUMENTS = {"inputs": "INPUTS", "mask_output": "OUTPUT_MASK", "multilook": "MULTILOOK", "alpha": "ALPHA",
                 "threshold": "THRESHOLD", "rule": "STABILITY", "test_window": "TEST_WINDOW"}

    def name(self):
        return "temporallabel"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Temporal reference label")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "Builds the clean reference image of deSpeckNet's phase 1 from co-registered acquisitions "
            "of a stable area: the temporal mean where the pixel did not change, nodata elsewhere.<br><br>"
            "<b>Inputs</b>: several rasters (one date each, band BAND) or one multi-band raster whose bands are dates, "
            "in time order.<br>"
            "<b>Stability rule</b>: <i>omnibus change test</i> (default) is the likelihood-ratio test for equal "
            "Gamma means over the dates (Conradsen et al. 2016), run on the geometric mean of a TEST_WINDOW × "
            "TEST_WINDOW window of each date, together with a test for a trend over the dates; a pixel is stable when "
            "neither rejects at risk ALPHA (ALPHA/2 each; with two dates the omnibus test alone, at ALPHA). The window raises the looks so that gradual change "
            "(a few dB over the series) is caught; its number of looks is measured on the stack, so spatially "
            "correlated speckle is accounted for. About ALPHA of the stable pixels, and a border of TEST_WINDOW/2 "
            "pixels around changed areas, are masked. <i>Speckle test</i> compares each pixel's temporal coefficient of "
            "variation with what L-look speckle alone gives for that many dates, at risk ALPHA; it misses most "
            "gradual change. Both work whatever the calibration; LOOKS = 0 estimates L from the stack. "
            "Few dates catch little: the log says how often a 6 dB change is caught with these dates and looks "
            "(five single-look dates: in well under half of the pixels), and warns when it is under half. "
            "<i>dB standard deviation</i> keeps "
            "pixels whose dB values vary less than THRESHOLD dB; the threshold must be above what speckle alone "
            "gives: about 5.6 dB at 1 look, 2.2 dB at 4.4 looks (GRD, where the default 2 dB keeps only about a "
            "third of the stable pixels), 1.4 dB at 10 looks. <i>Paper</i> keeps pixels whose standard deviation is at most "
            "THRESHOLD (ν = 0.1) in the data's own units: it keeps all or nothing unless the data is scaled like the paper's.<br>"
            "<b>Multilook</b>: odd window to average the label over stable neighbours (recommended with few dates).<br>"
            "Outputs: the label (input domain, NaN where unstable), the mask (1 stable, 0 changed) and the stable fraction."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, self.tr("Dates (rasters, or one multi-band raster)"), QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterNumber(self.BAND, self.tr("Band of each raster"), QgsProcessingParameterNumber.Integer, 1, minValue=1))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS, defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.STABILITY, self.tr("Stability rule"), RULE_LABELS,
                                                     defaultValue=RULES.index(DEFAULT_RULE)))
        self.addParameter(QgsProcessingParameterNumber(self.THRESHOLD, self.tr("Threshold (0: the rule's default)"),
                                                       QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.LOOKS, self.tr("Looks L of one date (0: estimate)"),
                                                       QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.add_advanced(QgsProcessingParameterNumber(self.ALPHA, self.tr("Risk of calling a stable pixel changed"),
                                                       QgsProcessingParameterNumber.Double, 0.01, minValue=1e-6,
                                                       maxValue=0.5))
        self.add_advanced(QgsProcessingParameterNumber(
            self.TEST_WINDOW, self.tr("Window of the omnibus test (odd; 1 = per pixel)"),
            QgsProcessingParameterNumber.Integer, 3, minValue=1, maxValue=15))
        self.addParameter(QgsProcessingParameterNumber(self.MULTILOOK, self.tr("Multilook window of the label (1 = none)"),
                                                       QgsProcessingParameterNumber.Integer, 1, minValue=1, maxValue=31))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Temporal label")))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_MASK, self.tr("Stability mask"), optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber(self.STABLE_FRACTION, self.tr("Fraction of stable pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.ESTIMATED_LOOKS, self.tr("Number of looks used by the speckle and omnibus tests")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        paths = [self.gdal_source(layer) for layer in layers]
        rule = RULES[self.parameterAsEnum(parameters, self.STABILITY, context)]
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context) or None
        looks = self.parameterAsDouble(parameters, self.LOOKS, context) or None
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        mask = self.parameterAsOutputLayer(parameters, self.OUTPUT_MASK, context) or None
        report = self.run_core(
            temporal_label, paths, output, mask,
            band=self.parameterAsInt(parameters, self.BAND, context),
            domain=DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)],
            rule=rule, threshold=threshold, looks=looks,
            alpha=self.parameterAsDouble(parameters, self.ALPHA, context),
            multilook=self.parameterAsInt(parameters, self.MULTILOOK, context),
            test_window=self.parameterAsInt(parameters, self.TEST_WINDOW, context),
            progress=self.progress(feedback),
        )
        feedback.pushInfo(f"{report.stable_fraction:.1%} of {report.valid_pixels} valid pixels are stable "
                          f"(rule {report.rule}, threshold {report.threshold:.4g})")
        results = {self.OUTPUT: output, self.STABLE_FRACTION: report.stable_fraction,
                   self.ESTIMATED_LOOKS: report.looks if report.looks is not None else 0.0}
        if mask:
            results[self.OUTPUT_MASK] = mask
        return results
