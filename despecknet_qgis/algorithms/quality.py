"""despecknet:quality - despeckling quality numbers, with or without a clean reference."""
import math

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
)
from osgeo import gdal

from ..core.domain import DOMAINS
from ..core.quality import quality_metrics
from ..core.raster import world_to_pixel
from .base import DOMAIN_LABELS, DespeckNetAlgorithm, geometries_in_crs

NUMBERS = [
    ("MOR", "mor", "Mean of the ratio image Y/X̂ (1 = no bias)"),
    ("VOR", "vor", "Variance of the ratio image (about 1/L)"),
    ("PSNR", "psnr_8bit", "PSNR, 8-bit scaling as in the paper (dB)"),
    ("SSIM", "ssim_8bit", "SSIM, 8-bit scaling"),
    ("PSNR_DB", "psnr_db", "PSNR on dB values, peak = the reference's dB range (dB)"),
    ("SSIM_DB", "ssim_db", "SSIM on dB values"),
    ("DG", "dg", "Despeckling gain, linear intensity (dB)"),
    ("EPI", "epi", "Edge preservation index, Sobel gradient-sum ratio on linear intensity"),
    ("CNN", None, "C_NN of X̂ at the points, mean (dB)"),
    ("CNN_REFERENCE", None, "C_NN of the reference at the points, mean (dB)"),
]


class QualityAlgorithm(DespeckNetAlgorithm):
    INPUT, NOISY, REFERENCE, POINTS = "INPUT", "NOISY", "REFERENCE", "POINTS"
    BAND, INPUT_DOMAIN, OUTPUT_RATIO = "BAND", "INPUT_DOMAIN", "OUTPUT_RATIO"
    ARGUMENTS = {"despeckled": "INPUT", "noisy": "NOISY", "reference": "REFERENCE", "points": "POINTS",
                 "ratio_output": "OUTPUT_RATIO"}

    def name(self):
        return "quality"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Despeckling quality metrics")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "Measures a despeckled image X̂ against its noisy original Y and, when given, a clean reference X "
            "(e.g. a temporal average). Always: MoR and VoR, mean and variance of the ratio image Y/X̂ (MoR "
            "should be 1; VoR near 1/L; structure in the ratio image means signal was removed). With a "
            "reference: PSNR after the paper's 8-bit scaling (it mostly measures bright targets on SAR), PSNR "
            "and SSIM on dB values (rank despeckling sensibly; their peak and range are the reference's darkest to "
            "brightest dB value, so compare them between methods on one scene, not between scenes), SSIM on 8-bit "
            "values, despeckling gain DG on linear intensity (higher is better; empty when X̂ equals X exactly), and "
            "the paper's edge preservation index EPI, the ratio of Sobel gradient sums of X̂ and X on linear "
            "intensity (1 = as much gradient as X; it barely sees blur, and leftover speckle lowers it). Pixels "
            "beside nodata count for EPI and SSIM only where their whole neighbourhood is valid. "
            "With POINTS on strong scatterers: C_NN, target over the mean of its 8 neighbours, in dB, averaged "
            "over the points both images measure."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Despeckled raster (X̂)")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.NOISY, self.tr("Noisy original (Y)")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Clean reference (X, optional)"), optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(self.POINTS, self.tr("Strong scatterers (points, optional)"),
                                                              [QgsProcessing.TypeVectorPoint], optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.BAND, self.tr("Band"), QgsProcessingParameterNumber.Integer, 1, minValue=1))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS, defaultValue=0))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_RATIO, self.tr("Ratio image Y/X̂"), optional=True, createByDefault=False))
        for key, _, label in NUMBERS:
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layer = self.raster_layer(parameters, self.INPUT, context)
        despeckled = self.gdal_source(layer, "INPUT")
        noisy = self.gdal_source(self.raster_layer(parameters, self.NOISY, context, feedback=feedback), "NOISY")
        ref_layer = self.raster_layer(parameters, self.REFERENCE, context)
        reference = self.gdal_source(ref_layer, "REFERENCE") if ref_layer is not None else None
        points = self.pixel_points(parameters, context, layer, despeckled)
        ratio = self.parameterAsOutputLayer(parameters, self.OUTPUT_RATIO, context) or None
        report = self.run_core(
            quality_metrics, despeckled, noisy, reference,
            band=self.parameterAsInt(parameters, self.BAND, context),
            domain=DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)],
            points=points, ratio_output=ratio, progress=self.progress(feedback),
        )
        values = report.as_dict()
        if report.c_nn:
            for row, col, of_estimate, of_reference in report.c_nn:
                for what, v in (("INPUT", of_estimate), ("REFERENCE", of_reference)):
                    if v is not None and not math.isfinite(v):
                        feedback.pushWarning(f"C_NN of {what} at pixel (row {row}, column {col}) is {v}: "
                                             + ("the point or all its neighbours are nodata." if math.isnan(v) else
                                                "the target or all its neighbours are 0."))
            # Over the points finite in both images, the same points for both means (one point of nodata left
            # both outputs empty, and the two means could come from different points).
            usable = [c for c in report.c_nn if math.isfinite(c[2]) and (not reference or math.isfinite(c[3]))]
            if len(usable) < len(report.c_nn):
                feedback.pushWarning(f"C_NN: {len(report.c_nn) - len(usable)} of {len(report.c_nn)} points left out of "
                                     "the means (see above).")
            values["CNN"] = sum(c[2] for c in usable) / len(usable) if usable else math.nan
            if reference:
                values["CNN_REFERENCE"] = sum(c[3] for c in usable) / len(usable) if usable else math.nan
        results = {}
        for key, attr, label in NUMBERS:
            value = values.get(attr) if attr else values.get(key)
            if value is None:
                continue
            if not math.isfinite(value):
                why = ("see the warnings above" if key.startswith("CNN") else
                       "the despeckled image equals the reference" if value > 0 else
                       "undefined here: the reference is constant, or the noisy image equals it")
                feedback.pushInfo(f"{key}: {value} ({why}); left empty.")
                continue
            results[key] = value
            feedback.pushInfo(f"{key} = {value:.4f}  ({label})")
        if ratio:
            results[self.OUTPUT_RATIO] = ratio
        return results

    def pixel_points(self, parameters, context, layer, path):
        source = self.parameterAsSource(parameters, self.POINTS, context)
        if source is None:
            return None
        ds = gdal.Open(path)
        to_pixel = world_to_pixel(ds)  # through GCPs where the raster has no geotransform (Sentinel-1 GRD)
        points = []
        for _, geom in geometries_in_crs(source, layer.crs(), context):
            if geom.type() != QgsWkbTypes.PointGeometry:
                raise QgsProcessingException("POINTS holds other geometries than points: give a layer of points.")
            for p in geom.asMultiPoint() if geom.isMultipart() else [geom.asPoint()]:
                cols, rows = to_pixel([p.x()], [p.y()])
                col, row = float(cols[0]), float(rows[0])
                if not (math.isfinite(col) and math.isfinite(row)):
                    raise QgsProcessingException(f"The point ({p.x():g}, {p.y():g}) of POINTS cannot be placed on the "
                                                 "raster's georeferencing: check the layer's CRS.")
                # floor, not int(): a point half a pixel left of or above the raster is outside, not pixel 0
                points.append((math.floor(row), math.floor(col)))
        return points
