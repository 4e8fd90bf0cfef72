"""The example Processing models shipped in examples/models/ (written by tools/make_processing_models.py).

Each is added to the provider as despecknet:<file name> and shown under the model's own title; a
plain QgsProcessingModelAlgorithm would use its title as both, which makes an awkward id. The Help
button opens the README's example section; the search words are the other algorithms' common ones;
the icon is the plugin's.
"""
import os

from qgis.core import (
    QgsMapLayer,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingModelAlgorithm,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)
from qgis.PyQt.QtGui import QIcon

from .algorithms.base import destination_path, needs_gdal, source_path
from .algorithms.input_layers import gdal_layer
from .algorithms.parameter_help import COMMON_TAGS, README_URL
from .core.errors import DespeckNetError, rename_arguments
from .core.files import check_outputs
from .core.model_info import checkpoint_path_for, unfinished_checkpoint_path_for

ICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icon.svg")
README_ANCHOR = "example-models-sample-data-and-a-pyqgis-script"  # GitHub's slug of the README section
TAGS = list(COMMON_TAGS) + ["model", "example", "chain", "workflow"]


class ExampleModel(QgsProcessingModelAlgorithm):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.loaded = self.fromFile(path)
        self.model_id = os.path.splitext(os.path.basename(path))[0]
        self.title = super().displayName()

    def name(self):
        return self.model_id

    def displayName(self):  # noqa: N802 - QGIS API
        return self.title

    def tags(self):
        return TAGS + self.model_id.split("_")

    def helpUrl(self):  # noqa: N802 - QGIS API
        return f"{README_URL}#{README_ANCHOR}"

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802 - QGIS API
        return ICON

    def createInstance(self):  # noqa: N802 - QGIS API
        return ExampleModel(self.path)

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        """Across the whole chain, as each algorithm does for its own parameters: no output of any step
        onto an input of the model, the bundled model or another output (each step checked its outputs
        against its own inputs only: a despeckled image replaced a date of the stack, a report replaced
        the user's model, reported done). And GDAL dataset names (/vsizip/, sub-datasets, a zipped SAFE
        product) pass as the algorithms take them, where QGIS 3.22's own check loads plain files only."""
        message = self._check_files(parameters, context)
        if message:
            return False, message
        return super().checkParameterValues(self._with_gdal_layers(parameters, context), context)

    def _check_files(self, parameters, context):
        destinations = {d.name() for d in self.destinationParameterDefinitions()}
        names, inputs, outputs = {}, {}, {}
        for d in self.parameterDefinitions():
            value = parameters.get(d.name())
            if value is None:
                continue
            if d.name() in destinations:
                path = destination_path(self, d, parameters, context)
                if not path:
                    continue
                written = [(d.name(), path)]
                if path.lower().endswith(".onnx"):  # train and finetune write the checkpoints beside it
                    written += [(f"the checkpoint beside {d.name()}", checkpoint_path_for(path)),
                                (f"the unfinished checkpoint beside {d.name()}", unfinished_checkpoint_path_for(path))]
                for name, p in written:
                    key = f"output{len(outputs)}"
                    names[key], outputs[key] = name, p
            elif isinstance(d, (QgsProcessingParameterRasterLayer, QgsProcessingParameterMultipleLayers,
                                QgsProcessingParameterFile)) or d.type() in ("source", "vector", "layer"):
                key = f"input{len(inputs)}"
                names[key], inputs[key] = d.name(), _files_of(value, context)
        try:
            check_outputs(outputs, inputs)
        except DespeckNetError as exc:
            return rename_arguments(str(exc), names)
        return None

    def _with_gdal_layers(self, parameters, context):
        """`parameters` with the raster layers of GDAL dataset names QGIS 3.22 does not load from a string."""
        given = dict(parameters)
        for d in self.parameterDefinitions():
            value = given.get(d.name())
            if isinstance(d, (QgsProcessingParameterRasterLayer, QgsProcessingParameterMultipleLayers)):
                values = value if isinstance(value, (list, tuple)) else [value]
                layers = [(gdal_layer(v, d.name(), context, calibrate=False) or v) if needs_gdal(v) else v
                          for v in values]
                given[d.name()] = layers if isinstance(value, (list, tuple)) else layers[0]
        return given


def _files_of(value, context) -> list:
    """The file names (or GDAL dataset names) behind a parameter value of layers or files."""
    files = []
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, QgsProcessingFeatureSourceDefinition):
            v = v.source.staticValue()
        if isinstance(v, str) and v and not os.path.exists(v):
            v = QgsProcessingUtils.mapLayerFromString(v, context, False) or v  # a project layer's name or id
        if isinstance(v, QgsMapLayer):
            v = v.source() if v.providerType() in ("gdal", "ogr") else None
        if isinstance(v, str) and v:
            files.append(source_path(v))
    return files
