"""What every deSpeckNet algorithm shares: parameter checks, core errors and feedback in QGIS terms.

- `checkParameterValues` says what is allowed where QGIS would only say "Incorrect
  parameter value for X": numeric ranges, enum values (names accepted too: DEVICE=cpu),
  model files of the wrong kind or missing, layers of the wrong geometry or with
  impossible coordinates, and destinations that are folders, in missing or read-only
  folders, the same as an input, the same as another output, or the bundled model.
  All of that before any work starts.
- `run_core` runs a core function with SIGTERM handled as a cancel and GDAL's block cache
  bounded, and turns its errors into QgsProcessingException, with the core's argument
  names (`tile_size`) replaced by this algorithm's parameter names (TILE_SIZE).
- What the toolbox shows comes from parameter_help.py: group, tags, short description,
  the README section behind the Help button, an icon from icons/, and the help of every
  parameter (its tooltip) with the default, range and enum names taken from the
  parameter's own definition; the same help ends each algorithm's help text, which is what
  `qgis_process help` prints.
"""
import html
import math
import os
import re
import sys

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorLayer,
    QgsProcessingUtils,
    QgsWkbTypes,
)

from ..core.defaults import RANGES, Range, TrainingDefaults
from ..core.domain import DOMAINS, check_domain
from ..core.errors import DespeckNetError, rename_arguments, translate
from ..core.files import backing_file, check_outputs, same_dataset
from ..core.inference import DEVICES, PRECISIONS
from ..core.model_info import bundled_files, checkpoint_instead_of_model
from ..core.progress import Progress, terminate_as_cancel
from ..core.raster import gdal_can_open, is_gdal_name
from ..core.sentinel1 import is_sentinel1_input
from .input_layers import calibrated_if_sentinel1, gdal_layer, sentinel1_problem
from .parameter_help import ALGORITHMS, COMMON_TAGS, DECIMALS, GROUPS, README_URL, parameter_help

ICONS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icons")

DOMAIN_LABELS = [
    "Intensity (linear power: sigma0, beta0, DN²)",
    "Amplitude (square root of intensity)",
    "Decibel (10·log10 of intensity)",
]
assert len(DOMAIN_LABELS) == len(DOMAINS)

# Core argument names -> Processing parameter names, for the messages of core errors.
# An algorithm adds or overrides entries in its own ARGUMENTS.
COMMON_ARGUMENTS = {
    "domain": "INPUT_DOMAIN", "device": "DEVICE", "precision": "PRECISION", "band": "BAND", "bands": "BAND",
    "model_path": "MODEL", "tile_size": "TILE_SIZE", "overlap": "OVERLAP",
    "input_path": "INPUT", "output_path": "OUTPUT", "output": "OUTPUT",
    "epochs": "EPOCHS", "patch": "PATCH_SIZE", "stride": "STRIDE", "batch_size": "BATCH_SIZE",
    "lr": "LEARNING_RATE", "lr_end": "LEARNING_RATE_END", "lr_steps": "LEARNING_RATE_STEPS",
    "validation_fraction": "VALIDATION_FRACTION", "seed": "SEED", "looks": "LOOKS", "patience": "PATIENCE",
    "onnx_path": "OUTPUT_MODEL", "checkpoint_path": "the checkpoint (.pt) beside OUTPUT_MODEL",
    "unfinished_checkpoint_path": "the unfinished checkpoint (.unfinished.pt) beside OUTPUT_MODEL",
}

_GEOMETRY_OF_TYPE = {
    QgsProcessing.TypeVectorPoint: (QgsWkbTypes.PointGeometry, "points"),
    QgsProcessing.TypeVectorLine: (QgsWkbTypes.LineGeometry, "lines"),
    QgsProcessing.TypeVectorPolygon: (QgsWkbTypes.PolygonGeometry, "polygons"),
}
_GEOMETRY_NAMES = {QgsWkbTypes.PointGeometry: "points", QgsWkbTypes.LineGeometry: "lines",
                   QgsWkbTypes.PolygonGeometry: "polygons", QgsWkbTypes.NullGeometry: "no geometry"}
_UNBOUNDED = 1e300


class DespeckNetAlgorithm(QgsProcessingAlgorithm):
    ARGUMENTS: dict = {}  # this algorithm's own core argument -> parameter names (beside COMMON_ARGUMENTS)
    UNIQUE_LAYERS: tuple = ()  # multiple-layer parameters in which a file may appear only once

    def __init_subclass__(cls, **kwargs):
        """An algorithm's own shortHelpString gets the parameter reference appended: the algorithm writes only
        its prose, and `qgis_process help` (which shows no parameter help of its own in QGIS 3.22) lists every
        parameter's default, range and enum names."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("shortHelpString")
        if own is not None:
            def shortHelpString(self):  # noqa: N802 - QGIS API
                return own(self) + self.parameter_reference()

            cls.shortHelpString = shortHelpString

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def tr(self, text):
        return text

    # --- what the toolbox shows (texts in parameter_help.py) -----------------------------------

    def help_entry(self):
        return ALGORITHMS[self.name()]

    def group(self):
        return self.tr(GROUPS[self.groupId()])

    def groupId(self):  # noqa: N802 - QGIS API
        return self.help_entry().group_id

    def tags(self):
        return list(dict.fromkeys([*COMMON_TAGS, *self.help_entry().tags]))

    def shortDescription(self):  # noqa: N802 - QGIS API
        return self.tr(self.help_entry().short_description)

    def helpUrl(self):  # noqa: N802 - QGIS API
        return f"{README_URL}#{self.help_entry().readme_anchor}"

    def svgIconPath(self):  # noqa: N802 - QGIS API
        return os.path.join(ICONS_DIR, f"{self.name()}.svg")

    def icon(self):
        from qgis.PyQt.QtGui import QIcon

        return QIcon(self.svgIconPath())

    def addParameter(self, definition, createOutput=True):  # noqa: N802 - QGIS API
        """QGIS's addParameter, with the parameter's help (its tooltip) from parameter_help.py and number boxes
        that show the smallest allowed value."""
        prose = parameter_help(self.name(), definition.name())
        if prose and not definition.help():
            definition.setHelp(" ".join(t for t in (self.tr(prose), self.parameter_facts(definition)) if t))
        if isinstance(definition, QgsProcessingParameterNumber) and \
                definition.dataType() == QgsProcessingParameterNumber.Double:
            decimals = number_decimals(definition)
            if decimals is not None:
                metadata = definition.metadata()
                wrapper = dict(metadata.get("widget_wrapper") or {})
                wrapper.setdefault("decimals", decimals)
                metadata["widget_wrapper"] = wrapper
                definition.setMetadata(metadata)
        return super().addParameter(definition, createOutput)

    def parameter_facts(self, d) -> str:
        """Default, allowed range and enum names, read from the definition (built from core/defaults.py)."""
        facts = []
        default = d.defaultValue()
        if isinstance(d, QgsProcessingParameterEnum):
            names = self.enum_names().get(d.name(), [])
            choices = ", ".join(f"{i} or {names[i]}" if i < len(names) else str(i) for i in range(len(d.options())))
            facts.append(f"Choices (number or name): {choices}.")
            if isinstance(default, int) and 0 <= default < len(names):
                facts.append(f"Default: {names[default]}.")
        elif isinstance(d, QgsProcessingParameterNumber):
            lo = d.minimum() if abs(d.minimum()) < _UNBOUNDED else None
            hi = d.maximum() if abs(d.maximum()) < _UNBOUNDED else None
            if lo is not None or hi is not None:
                facts.append(f"Allowed: {Range(lo, hi).describe()}.")
            if default is not None:
                facts.append(f"Default: {default:g}." if isinstance(default, (int, float)) else f"Default: {default}.")
        elif isinstance(d, QgsProcessingParameterBoolean):
            facts.append(f"Default: {'on' if default else 'off'}.")
        elif default not in (None, ""):
            facts.append(f"Default: {default}.")
        if d.flags() & QgsProcessingParameterDefinition.FlagOptional and not isinstance(
                d, QgsProcessingParameterBoolean):
            facts.append("Optional.")
        return " ".join(facts)

    def parameter_reference(self) -> str:
        """Every parameter with its help, as HTML lines: the end of each algorithm's help text."""
        lines = [f"<b>{d.name()}</b> ({_escape(d.description())}): {_escape(d.help())}"
                 for d in self.parameterDefinitions()
                 if d.help() and not d.flags() & QgsProcessingParameterDefinition.FlagHidden]
        return "<br><br><b>Parameters</b><br>" + "<br>".join(lines) if lines else ""

    # --- enum values by name ------------------------------------------------------------------

    def enum_names(self) -> dict:
        """Enum parameter -> the names accepted instead of an index (same order as the options)."""
        from ..core.defaults import PHASE2_PRESETS
        from ..core.temporal_label import RULES
        from .output_options import ENUM_NAMES

        return {"INPUT_DOMAIN": list(DOMAINS), "DEVICE": list(DEVICES), "PRECISION": list(PRECISIONS),
                "PRESET": [p.key for p in PHASE2_PRESETS],
                "STABILITY": list(RULES), **ENUM_NAMES}

    def _enum_index(self, name, value):
        """The index an enum value stands for (an index or one of the names), None if neither."""
        definition = self.parameterDefinition(name)
        options = definition.options()
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)) and float(value).is_integer():
            return int(value) if 0 <= int(value) < len(options) else None
        text = str(value).strip()
        if re.fullmatch(r"-?\d+", text):
            return int(text) if 0 <= int(text) < len(options) else None
        names = self.enum_names().get(name, [])
        lowered = [n.lower() for n in names]
        return lowered.index(text.lower()) if text.lower() in lowered else None

    def parameterAsEnum(self, parameters, name, context):  # noqa: N802 - QGIS API
        value = parameters.get(name) if hasattr(parameters, "get") else None
        if isinstance(value, str) and not re.fullmatch(r"\s*-?\d+\s*", value):
            index = self._enum_index(name, value)
            if index is not None:
                return index
        return super().parameterAsEnum(parameters, name, context)

    # --- checks before any work ------------------------------------------------------------

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        try:
            message = self.check_values(parameters, context)
        except QgsProcessingException as exc:
            message = str(exc)
        if message:
            return False, message
        # QGIS's own checks, with enum names given as their indices (it accepts only those)
        indexed = dict(parameters)
        for definition in self.parameterDefinitions():
            if isinstance(definition, QgsProcessingParameterEnum) and definition.name() in indexed:
                index = self._enum_index(definition.name(), indexed[definition.name()])
                if index is not None:
                    indexed[definition.name()] = index
            if isinstance(definition, QgsProcessingParameterRasterLayer) and definition.name() in indexed:
                # QGIS 3.22 loads layers only from plain files: give it the layer of a GDAL dataset name
                layer = self.raster_layer(indexed, definition.name(), context, calibrate=False)
                if layer is not None and layer.isValid():
                    indexed[definition.name()] = layer
        return super().checkParameterValues(indexed, context)

    def check_values(self, parameters, context):
        """A message saying what is wrong with the parameters, or None. Runs before any work."""
        # The format first, before any input is opened; unless the output would overwrite an input or the
        # bundled model, which the output check below says first.
        destinations = {d.name() for d in self.destinationParameterDefinitions()}
        named = {os.path.abspath(backing_file(v)) for k, value in parameters.items() if k not in destinations
                 for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str) and v}
        named |= {os.path.abspath(f) for f in bundled_files()}
        formats = []
        for d in self.parameterDefinitions():
            if isinstance(d, QgsProcessingParameterRasterDestination) and parameters.get(d.name()) is not None:
                value = self.parameterAsOutputLayer(parameters, d.name(), context)
                message = self._check_raster_format(d, value)
                if message and os.path.abspath(value) not in named:
                    return message
                formats.append(message)
        inputs, outputs = {}, {}
        for d in self.parameterDefinitions():
            name, value = d.name(), parameters.get(d.name())
            if value is None:
                continue
            message = None
            if isinstance(d, QgsProcessingParameterNumber):
                message = self._check_number(d, value)
            elif isinstance(d, QgsProcessingParameterEnum):
                message = self._check_enum(d, value)
            elif isinstance(d, QgsProcessingParameterFile):
                message = self._check_file(d, value)
                if not message and value:
                    inputs[name] = [str(value)]
            elif isinstance(d, (QgsProcessingParameterRasterLayer, QgsProcessingParameterMultipleLayers,
                                QgsProcessingParameterFeatureSource, QgsProcessingParameterVectorLayer)):
                message = self._check_layers(d, value, context)
                if not message:
                    inputs[name] = self._layer_paths(d, parameters, context)
                    message = self._check_unique(d, inputs[name]) or self._check_features(d, parameters, context)
            elif isinstance(d, (QgsProcessingParameterRasterDestination, QgsProcessingParameterFileDestination,
                                QgsProcessingParameterFeatureSink)):
                if isinstance(d, QgsProcessingParameterFileDestination):
                    message = self._check_file_destination(d, parameters, context)
                path = self._destination_path(d, parameters, context)
                if path:
                    outputs[name] = path
            if message:
                return message
        try:
            self._check_domain_of_inputs(parameters, inputs)
            check_outputs(outputs, inputs)
        except DespeckNetError as exc:
            return rename_arguments(str(exc), {})
        return next((m for m in formats if m), None)

    def _check_domain_of_inputs(self, parameters, inputs):
        """Inputs that say their domain (a Sentinel-1 product: calibrated intensity; this plugin's outputs:
        DESPECKNET_OUTPUT_DOMAIN) against INPUT_DOMAIN (core.domain.check_domain), before any work. The run
        gets a product's calibrated file, so the product is recognised here."""
        if self.parameterDefinition("INPUT_DOMAIN") is None or parameters.get("INPUT_DOMAIN") is None:
            return
        index = self._enum_index("INPUT_DOMAIN", parameters["INPUT_DOMAIN"])
        if index is not None:
            check_domain(DOMAINS[index], *(p for paths in inputs.values() for p in paths))

    @staticmethod
    def _check_number(d, value):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or value == "":
            return None  # an expression or another dynamic value: QGIS evaluates and checks it
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"{d.name()} = {value!r} is not a number: {d.description()}."
        lo = d.minimum() if abs(d.minimum()) < _UNBOUNDED else None
        hi = d.maximum() if abs(d.maximum()) < _UNBOUNDED else None
        allowed = Range(lo, hi)
        if not allowed.contains(number):
            return f"{d.name()} = {number:g} is out of range: '{d.description()}' must be {allowed.describe()}."
        return None

    def _check_enum(self, d, value):
        if not isinstance(value, (str, int, float, list, tuple)) or isinstance(value, bool):
            return None
        if isinstance(value, (list, tuple)):
            return None if d.allowMultiple() else f"{d.name()} takes one value."
        if value == "" and d.flags() & QgsProcessingParameterDefinition.FlagOptional:
            return None
        if self._enum_index(d.name(), value) is not None:
            return None
        names = self.enum_names().get(d.name(), [])
        choices = ", ".join(f"{i} ({names[i] if i < len(names) else label})" for i, label in enumerate(d.options()))
        return f"{d.name()} = {value!r} is not one of its choices: give the number{' or the name' if names else ''} of one of {choices}."

    @staticmethod
    def _check_file(d, value):
        if not isinstance(value, str):
            return None
        path = value
        if not path:
            return None
        ext = d.extension().lower().lstrip(".") if d.behavior() == QgsProcessingParameterFile.File else ""
        if os.path.isdir(path):
            return f"{d.name()} {path} is a folder: choose the {'.' + ext + ' ' if ext else ''}file in it."
        if not os.path.exists(path):
            return f"{d.name()}: the file {path} does not exist."
        stem, given = os.path.splitext(path)
        given = given.lower().lstrip(".")
        if ext and given != ext:
            if ext == "onnx" and given in ("pt", "pth"):
                return f"{d.name()} {checkpoint_instead_of_model(path)}"
            if ext == "pt" and given == "onnx":
                return (f"{d.name()} {path} is an ONNX model; this needs the .pt checkpoint written beside it by "
                        f"Train or Fine-tune ({stem}.pt).")
            return f"{d.name()} {path} is not a .{ext} file."
        return None

    @staticmethod
    def _check_layers(d, value, context):
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not isinstance(v, str) or not v:
                continue
            if is_sentinel1_input(v):
                problem = sentinel1_problem(v, d.name())
                if problem:
                    return problem
                continue
            path = source_path(v)
            if os.path.exists(path) or QgsProcessingUtils.mapLayerFromString(v, context, False) is not None:
                continue
            if gdal_can_open(v):
                continue  # /vsizip/, /vsicurl/, sub-datasets: any name GDAL opens
            if is_layer_source(v):
                continue  # a service or database source: QGIS checks those itself
            if is_gdal_name(v):
                return (f"{d.name()}: GDAL cannot open {v} as a raster: check the name (for /vsizip/, the zip's "
                        f"path then the raster's path inside it) and that the source is reachable.")
            return f"{d.name()}: the file {path} does not exist."
        return None

    def _layer_paths(self, d, parameters, context) -> list:
        """The files behind a layer parameter's layers (for the output checks)."""
        if isinstance(d, QgsProcessingParameterMultipleLayers):
            layers = self.parameterAsLayerList(parameters, d.name(), context, calibrate=False)
        elif isinstance(d, QgsProcessingParameterRasterLayer):
            layers = [self.raster_layer(parameters, d.name(), context, calibrate=False)]
        else:
            layers = [self.parameterAsVectorLayer(parameters, d.name(), context)]
        paths = []
        for layer in layers:
            if layer is not None and layer.providerType() in ("gdal", "ogr"):
                paths.append(source_path(layer.source()))
        values = parameters.get(d.name())
        # a SAFE product's layer is its calibrated copy: the product itself is an input too
        paths += [v for v in (values if isinstance(values, (list, tuple)) else [values]) if is_sentinel1_input(v)]
        return paths

    def _check_unique(self, d, paths):
        if d.name() not in self.UNIQUE_LAYERS:
            return None
        for i, p in enumerate(paths):
            # two GDAL names in one zip are two inputs, one name spelled two ways is one (same_dataset)
            if any(same_dataset(p, q) for q in paths[i + 1:]):
                return f"{d.name()} lists {p} more than once: give each file once."
        return None

    def _check_features(self, d, parameters, context):
        """Vector inputs: the geometry type asked for, and coordinates possible in the layer's CRS."""
        if not isinstance(d, QgsProcessingParameterFeatureSource):
            return None
        source = self.parameterAsSource(parameters, d.name(), context)
        if source is None:
            return None
        wanted = [_GEOMETRY_OF_TYPE[t] for t in d.dataTypes() if t in _GEOMETRY_OF_TYPE]
        geometry = QgsWkbTypes.geometryType(source.wkbType())
        if wanted and geometry not in [w[0] for w in wanted]:
            return (f"{d.name()} holds {_GEOMETRY_NAMES.get(geometry, 'other geometries')}; "
                    f"give a layer of {' or '.join(w[1] for w in wanted)}.")
        crs = source.sourceCrs()
        extent = source.sourceExtent()
        if crs.isValid() and crs.isGeographic() and not extent.isEmpty() and (
                abs(extent.xMinimum()) > 180.001 or abs(extent.xMaximum()) > 180.001
                or abs(extent.yMinimum()) > 90.001 or abs(extent.yMaximum()) > 90.001):
            return (f"{d.name()} has coordinates up to ({extent.xMaximum():.0f}, {extent.yMaximum():.0f}), "
                    f"impossible in its CRS {crs.authid()} (degrees of longitude and latitude). A GeoJSON file "
                    "without a 'crs' member is read as WGS 84: give the layer its real CRS (e.g. save it as a "
                    "GeoPackage in that CRS).")
        return None

    @staticmethod
    def _check_raster_format(d, value):
        """GeoTIFF only, said before any work (a fine-tune into x.gpkg tuned the whole model, then refused)."""
        from ..core.raster import driver_for

        if not value or value == QgsProcessing.TEMPORARY_OUTPUT:
            return None
        try:
            driver_for(value, d.name())
        except DespeckNetError as exc:
            return rename_arguments(str(exc), {})
        return None

    def _check_file_destination(self, d, parameters, context):
        """A report or a model is a file: a layer source (memory:, a database) was written as a file of that name
        in the current folder, reported done."""
        value = self.parameterAsFileOutput(parameters, d.name(), context)
        if value and is_layer_source(value):
            return (f"{d.name()} = {value!r} is not a file: '{d.description()}' is written as a file, not as a "
                    "layer. Give a file path" + (", or leave it empty." if d.flags() & QgsProcessingParameterDefinition.FlagOptional else "."))
        return None

    def _destination_path(self, d, parameters, context):
        return destination_path(self, d, parameters, context)

    # --- running the core --------------------------------------------------------------------

    def progress(self, feedback) -> Progress:
        if feedback is None:
            return Progress()
        return Progress(report=feedback.setProgress, is_cancelled=feedback.isCanceled, log=self._log_to(feedback))

    def progress_part(self, feedback, start: float, end: float) -> Progress:
        """Progress of one stage of a longer job, mapped onto start..end percent."""
        return Progress(report=lambda p: feedback.setProgress(start + (end - start) * p / 100.0),
                        is_cancelled=feedback.isCanceled, log=self._log_to(feedback))

    def _log_to(self, feedback):
        # the core's warnings name its arguments ("give `looks`"): the user sets LOOKS
        return lambda text: feedback.pushInfo(self.in_parameter_names(text))

    def in_parameter_names(self, text: str) -> str:
        """A core text (message or log line) in this algorithm's parameter names."""
        return rename_arguments(text, {**COMMON_ARGUMENTS, **self.ARGUMENTS})

    def message(self, exc: DespeckNetError) -> str:
        """A core error's message in this algorithm's parameter names."""
        return self.in_parameter_names(str(exc))

    def run_core(self, call, *args, **kwargs):
        """Run a core function (SIGTERM = cancel, bounded GDAL cache); its errors become QgsProcessingException."""
        from ..core.raster import gdal_cache_limit

        try:
            with terminate_as_cancel(), gdal_cache_limit():
                return call(*args, **kwargs)
        except DespeckNetError as exc:
            raise QgsProcessingException(self.message(exc)) from exc
        except ImportError as exc:
            raise QgsProcessingException(
                f"A Python package deSpeckNet needs is missing from QGIS's Python ({exc}). "
                "Install numpy, onnxruntime (and torch for training) into the Python QGIS uses; see the README."
            ) from exc
        except (FloatingPointError, ValueError, MemoryError) as exc:
            raise QgsProcessingException(self.message(translate(exc))) from exc

    def raster_layer(self, parameters, name, context, calibrate=True, feedback=None):
        """parameterAsRasterLayer, also for GDAL dataset names QGIS 3.22 does not load from a string
        (/vsizip/, /vsicurl/, sub-datasets). A Sentinel-1 product gives its calibrated sigma0, or
        with `calibrate` False (the checks before a run) its own layer, checked but not calibrated.
        With the run's `feedback`, a calibration shows its progress and can be cancelled (SIGTERM too)."""
        import contextlib

        from ..core.raster import gdal_cache_limit

        value = parameters.get(name)
        progress = self.progress(feedback) if feedback is not None else None
        with (terminate_as_cancel() if feedback is not None else contextlib.nullcontext()), gdal_cache_limit():
            if is_sentinel1_input(value):  # a SAFE product: its calibrated sigma0
                return gdal_layer(value, name, context, calibrate, progress)
            layer = self.parameterAsRasterLayer(parameters, name, context)
            if layer is None:
                return gdal_layer(value, name, context, calibrate, progress)
            return calibrated_if_sentinel1(layer, name, context, calibrate, progress)

    def parameterAsLayerList(self, parameters, name, context, calibrate=True):  # noqa: N802 - QGIS API
        """QGIS's layer list, also for GDAL dataset names and SAFE products (in the order given;
        `calibrate` as in raster_layer)."""
        values = parameters.get(name)
        if not isinstance(values, (list, tuple)) or not any(needs_gdal(v) for v in values):
            layers = super().parameterAsLayerList(parameters, name, context)
            return [calibrated_if_sentinel1(layer, name, context, calibrate) for layer in layers]
        layers = []
        for v in values:
            layer = gdal_layer(v, name, context, calibrate) if needs_gdal(v) else None
            layers.extend([layer] if layer is not None else super().parameterAsLayerList({name: [v]}, name, context))
        return [calibrated_if_sentinel1(layer, name, context, calibrate) for layer in layers]

    def gdal_source(self, layer, what="INPUT"):
        """The file behind a raster layer; deSpeckNet reads rasters through GDAL."""
        if layer is None or not layer.isValid():
            raise QgsProcessingException(
                f"{what} is not a readable raster layer: choose an existing GeoTIFF (or another raster GDAL "
                "reads) holding SAR intensity, amplitude or dB values."
            )
        named = what if repr(layer.name()) in what else f"{what} '{layer.name()}'"
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{named} comes from the '{layer.providerType()}' provider; deSpeckNet reads "
                "files through GDAL. Save the layer as a GeoTIFF first."
            )
        source = layer.source()
        if "|option:" in source:  # QGIS opens it with GDAL open options, which the core's GDAL calls would not get
            options = ", ".join(o.split(":", 1)[1] for o in source.split("|")[1:] if o.startswith("option:"))
            raise QgsProcessingException(
                f"{named} is opened with GDAL open options ({options}), which deSpeckNet does not pass "
                f"on: give the file itself ({source_path(source)}), or save the layer as a GeoTIFF first.")
        return source

    # --- declaring parameters --------------------------------------------------------------

    def add_number(self, name, label, default, advanced=False, integer=False, minimum=0.0, maximum=None, allowed=None):
        """A number parameter; `allowed` (a core Range) gives minimum and maximum and is stated in the label."""
        if allowed is not None:
            minimum, maximum = allowed.minimum, allowed.maximum
            label = f"{label} ({allowed.describe()})"
        kind = QgsProcessingParameterNumber.Integer if integer else QgsProcessingParameterNumber.Double
        param = QgsProcessingParameterNumber(name, self.tr(label), kind, default,
                                             minValue=minimum if minimum is not None else -sys.float_info.max)
        if maximum is not None:
            param.setMaximum(maximum)
        if advanced:
            self.add_advanced(param)
        else:
            self.addParameter(param)

    def add_advanced(self, param):
        """Add `param` under the dialog's Advanced parameters."""
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def number_decimals(definition):
    """Decimals a Double parameter's number box needs to show its smallest value (None: QGIS's own choice).
    Without them QGIS rounds to 6 decimals, and a learning rate of 1e-7 typed in the dialog becomes 0."""
    if definition.name() in DECIMALS:
        return DECIMALS[definition.name()]
    smallest = [v for v in (definition.minimum(), definition.defaultValue())
                if isinstance(v, (int, float)) and 0 < abs(v) < 1e-4]
    return math.ceil(-math.log10(min(abs(v) for v in smallest))) + 2 if smallest else None


def destination_path(alg, d, parameters, context):
    """The file a destination parameter of `alg` (an algorithm or a model) writes, or None (a memory layer, a
    database, a temporary output)."""
    if isinstance(d, QgsProcessingParameterFileDestination):
        value = alg.parameterAsFileOutput(parameters, d.name(), context)
    else:
        value = alg.parameterAsOutputLayer(parameters, d.name(), context)
    if not value or value == QgsProcessing.TEMPORARY_OUTPUT:
        return None
    if value.startswith("ogr:"):
        m = re.search(r"dbname='([^']*)'", value)
        return m.group(1) if m else None
    if is_layer_source(value):
        return None
    return source_path(value)


def is_layer_source(value: str) -> bool:
    """A memory layer, a database or a web service rather than a file."""
    return value.startswith(("memory:", "postgres:", "dbname=", "PG:", "ogr:")) or "://" in value


# What QGIS appends to a file's path in a layer source: "|layername=roads", "|option:KEY=VALUE", ...
_SOURCE_OPTION = re.compile(r"\|(layername|layerid|subset|geometrytype|uniqueGeometryType|option:)", re.IGNORECASE)


def source_path(value: str) -> str:
    """The file of a layer source or destination, without QGIS's "|layername=..." options (a "|" in a folder or
    file name is part of the path: cutting at it named the folder as the input)."""
    if os.path.exists(value):
        return value
    found = _SOURCE_OPTION.search(value)
    return value[:found.start()] if found else value


def needs_gdal(value) -> bool:
    """A layer value QGIS 3.22 does not load itself: a SAFE product or a GDAL name that is no plain file."""
    return isinstance(value, str) and (is_sentinel1_input(value) or (is_gdal_name(value) and gdal_can_open(value)))


def geometries_in_crs(source, crs, context):
    """(feature id, geometry) of a feature source's non-empty features, reprojected to `crs`."""
    from qgis.core import QgsCoordinateTransform, QgsCsException

    transform = QgsCoordinateTransform(source.sourceCrs(), crs, context.transformContext())
    for feature in source.getFeatures():
        geom = feature.geometry()
        if geom.isEmpty():
            continue
        if source.sourceCrs() != crs:
            try:
                geom.transform(transform)
            except QgsCsException as exc:
                raise QgsProcessingException(
                    f"Feature {feature.id()} cannot be reprojected from {source.sourceCrs().authid()} to "
                    f"{crs.authid()} ({exc}): check the layer's CRS."
                ) from exc
            box = geom.boundingBox()
            if not all(math.isfinite(v) for v in (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum())):
                # e.g. a GeoPackage layer written without a CRS: "Undefined geographic SRS" holding metres
                name = source.sourceCrs().authid() or source.sourceCrs().description() or "no CRS"
                raise QgsProcessingException(
                    f"Feature {feature.id()} has no finite coordinates once reprojected from the layer's CRS ({name}) "
                    f"to the raster's ({crs.authid() or crs.description() or 'no CRS'}): the layer's CRS is probably "
                    "wrong or undefined. Set the layer's CRS (Layer Properties > Source), then run again.")
        yield feature.id(), geom


def add_training_parameters(alg, defaults: TrainingDefaults, advanced_lr: bool):
    """PATCH_SIZE, STRIDE, BATCH_SIZE, LEARNING_RATE, SEED, VALIDATION_FRACTION: shared by train and finetune,
    with the defaults and ranges the core uses (core/defaults.py)."""
    alg.add_number("PATCH_SIZE", "Patch size, pixels", defaults.patch, integer=True, allowed=RANGES["patch"])
    alg.add_number("STRIDE", "Stride between patches, pixels", defaults.stride, advanced=True, integer=True,
                   allowed=RANGES["stride"])
    alg.add_number("BATCH_SIZE", "Batch size", defaults.batch_size, integer=True, allowed=RANGES["batch_size"])
    alg.add_number("LEARNING_RATE", "Learning rate", defaults.lr, advanced=advanced_lr, allowed=RANGES["lr"])
    alg.add_number("SEED", "Random seed", defaults.seed, integer=True)
    alg.add_number("VALIDATION_FRACTION", "Fraction held out for validation", defaults.validation_fraction,
                   advanced=True, allowed=RANGES["validation_fraction"])


def training_arguments(alg, parameters, context) -> dict:
    return {
        "patch": alg.parameterAsInt(parameters, "PATCH_SIZE", context),
        "stride": alg.parameterAsInt(parameters, "STRIDE", context),
        "batch_size": alg.parameterAsInt(parameters, "BATCH_SIZE", context),
        "lr": alg.parameterAsDouble(parameters, "LEARNING_RATE", context),
        "seed": alg.parameterAsInt(parameters, "SEED", context),
        "validation_fraction": alg.parameterAsDouble(parameters, "VALIDATION_FRACTION", context),
    }
