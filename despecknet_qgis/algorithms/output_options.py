"""The input and output choices despeckle and finetune share: zeros as nodata, the output's
domain and data type, and a processing extent. One definition, mapped to the core's
arguments (zero_is_nodata, output_domain, output_type, extent) in one place.
"""
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
)

from ..core.domain import DOMAINS
from ..core.tiled_predict import OUTPUT_TYPES

ZERO_IS_NODATA = "ZERO_IS_NODATA"
OUTPUT_DOMAIN = "OUTPUT_DOMAIN"
OUTPUT_TYPE = "OUTPUT_TYPE"
EXTENT = "EXTENT"

# Names accepted on the command line, in the order of the options (base.enum_names).
OUTPUT_DOMAIN_NAMES = ("same",) + DOMAINS
OUTPUT_DOMAIN_LABELS = ["Same as the input", "Intensity (linear power)", "Amplitude (square root of intensity)",
                        "Decibel (10·log10 of intensity)"]
assert len(OUTPUT_DOMAIN_LABELS) == len(OUTPUT_DOMAIN_NAMES)
ENUM_NAMES = {OUTPUT_DOMAIN: list(OUTPUT_DOMAIN_NAMES), OUTPUT_TYPE: list(OUTPUT_TYPES)}
# Core argument names -> these parameters, for the messages of core errors.
ARGUMENTS = {"zero_is_nodata": ZERO_IS_NODATA, "output_domain": OUTPUT_DOMAIN, "output_type": OUTPUT_TYPE,
             "extent": EXTENT}

HELP = (
    "<b>Zeros are nodata</b> (default on): pixels equal to 0 in a band that declares no nodata are treated as "
    "nodata and stay 0, declared nodata in the output. Sentinel-1 GRD borders are 0 without a declared nodata, "
    "and read as signal they make bright halos; a physical intensity or amplitude is never exactly 0. Decibel "
    "inputs keep their zeros (0 dB is data).<br>"
    "<b>Complex input</b> (CInt16, CInt32, CFloat32, CFloat64, e.g. SLC): despeckled as |z|², in the "
    "intensity domain, or as |z| with the amplitude input domain; decibel is refused.<br>"
    "<b>Output domain</b>: the same as the input (default), intensity, amplitude or decibel. A nodata value "
    "that is data in the output's domain (0 in decibel) becomes NaN. <b>Output data type</b>: Float32 "
    "(default) or Float64.<br>"
    "Band names and the input's metadata are copied; the model's name, version and SHA-256, the algorithm, "
    "the domains and the plugin version are written into the output's metadata (gdalinfo shows them).<br>"
)
EXTENT_HELP = (
    "<b>Processing extent</b> (optional): only the pixels it touches are despeckled and written; the "
    "network's margin is read from around it where the raster has one, and the band's statistics come from "
    "the whole band, so the result equals the same window of a whole-image run. Rasters georeferenced by "
    "GCPs only (Sentinel-1 GRD) take the pixels the extent covers through their GCPs.<br>"
)


def add_output_parameters(alg, extent: bool = True) -> None:
    """ZERO_IS_NODATA, OUTPUT_DOMAIN and OUTPUT_TYPE (advanced where the default suits most), and EXTENT."""
    alg.add_advanced(QgsProcessingParameterBoolean(
        ZERO_IS_NODATA, alg.tr("Zeros are nodata (where no nodata is declared)"), defaultValue=True))
    alg.addParameter(QgsProcessingParameterEnum(OUTPUT_DOMAIN, alg.tr("Output domain"), OUTPUT_DOMAIN_LABELS,
                                                defaultValue=0))
    alg.add_advanced(QgsProcessingParameterEnum(OUTPUT_TYPE, alg.tr("Output data type"), list(OUTPUT_TYPES),
                                                defaultValue=0))
    if extent:
        alg.addParameter(QgsProcessingParameterExtent(EXTENT, alg.tr("Processing extent (empty: the whole raster)"),
                                                      optional=True))


def output_arguments(alg, parameters, context, layer=None) -> dict:
    """The core's keyword arguments for these parameters; `layer` (the input) gives EXTENT's CRS."""
    domain_index = alg.parameterAsEnum(parameters, OUTPUT_DOMAIN, context)
    arguments = {
        "zero_is_nodata": alg.parameterAsBool(parameters, ZERO_IS_NODATA, context),
        "output_domain": None if domain_index == 0 else OUTPUT_DOMAIN_NAMES[domain_index],
        "output_type": OUTPUT_TYPES[alg.parameterAsEnum(parameters, OUTPUT_TYPE, context)],
    }
    if layer is not None and alg.parameterDefinition(EXTENT) is not None and parameters.get(EXTENT):
        crs = layer.crs() if layer.crs().isValid() else QgsCoordinateReferenceSystem()
        rect = alg.parameterAsExtent(parameters, EXTENT, context, crs)
        if rect.isNull() or rect.isEmpty():
            raise QgsProcessingException(f"EXTENT {parameters.get(EXTENT)!r} is empty: draw a rectangle over the "
                                         "raster, or leave EXTENT empty for the whole raster.")
        arguments["extent"] = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
    return arguments
