"""Write the example Processing models the plugin ships (despecknet_qgis/examples/models/*.model3).

Usage: make processing-models (or .venv/bin/python tools/make_processing_models.py [OUT_DIR]).

The models are built here with the Processing API rather than drawn in the modeler, so that a
change of an algorithm's parameters shows up in review as a change of this script and of the
regenerated files. Each model input is a copy of the child algorithm's own parameter definition
(same type, extension, enum labels, defaults and ranges), so the models stay in step with the
algorithms. The provider (provider.py) adds every .model3 of that folder as despecknet:<name>.

The chains:
  despeckle_stats             despecknet:despeckle -> despecknet:specklestats (ENL/Cx before and after)
  label_train_despeckle       despecknet:temporallabel -> despecknet:train -> despecknet:despeckle
  finetune_despeckle_folder   despecknet:finetune -> despecknet:despecklebatch (INPUT_FOLDER)
"""
import os
import sys

# Qt writes XML attributes in hash order: a fixed seed (read before Qt starts) gives stable diffs.
os.environ.setdefault("QT_HASH_SEED", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "despecknet_qgis", "examples", "models")
GROUP = "Example models"


def _api():
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
    )

    return (QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
            QgsProcessingModelOutput, QgsProcessingModelParameter)


class ModelBuilder:
    """A thin layer over QgsProcessingModelAlgorithm: inputs copied from child algorithms, children, outputs."""

    def __init__(self, name: str, title: str, description: str):
        from qgis.core import QgsApplication

        model_cls, *_ = _api()
        self.registry = QgsApplication.processingRegistry()
        # The model's own name is its title (what the toolbox and the modeler show); the provider adds it as
        # despecknet:<file name> (example_models.py).
        self.model = model_cls(title, GROUP, GROUP.lower().replace(" ", ""))
        self.file_name = name
        self.help = {"ALG_DESC": description, "ALG_CREATOR": "deSpeckNet for QGIS",
                     "ALG_HELP_CREATOR": "tools/make_processing_models.py"}
        self.inputs = 0

    def input_like(self, alg_id: str, param: str, name: str, description: str, help_text: str,
                   default=None, advanced: bool = False, optional=None):
        """A model input with the definition of `param` of `alg_id` (renamed, relabelled)."""
        from qgis.core import QgsProcessingParameterDefinition
        from qgis.PyQt.QtCore import QPointF

        *_, parameter_cls = _api()
        alg = self.registry.algorithmById(alg_id)
        if alg is None:
            raise SystemExit(f"{alg_id} is not registered: is the despecknet provider loaded?")
        definition = alg.parameterDefinition(param).clone()
        definition.setName(name)
        definition.setDescription(description)
        # The tooltip: what the input is for in this model, then the algorithm's own help (default, range, names).
        definition.setHelp(f"{help_text} {definition.help()}".strip())
        if default is not None:
            definition.setDefaultValue(default)
        flags = definition.flags()
        if advanced:
            flags |= QgsProcessingParameterDefinition.FlagAdvanced
        if optional is not None:
            flags = (flags | QgsProcessingParameterDefinition.FlagOptional) if optional else \
                (flags & ~QgsProcessingParameterDefinition.FlagOptional)
        definition.setFlags(flags)
        component = parameter_cls(name)
        component.setDescription(name)
        component.setPosition(QPointF(120 + 230 * (self.inputs % 4), 60 + 70 * (self.inputs // 4)))
        self.inputs += 1
        self.model.addModelParameter(definition, component)
        self.help[name] = help_text
        return name

    def child(self, child_id: str, alg_id: str, description: str, position, sources: dict, outputs=None,
              static=None):
        """A child algorithm. `sources`: its parameter -> model input name, ("child", output) or a list of them;
        `static`: its parameter -> fixed value; `outputs`: its output -> (model output name, description)."""
        from qgis.PyQt.QtCore import QPointF

        _, child_cls, source_cls, output_cls, _ = _api()
        child = child_cls(alg_id)
        child.setChildId(child_id)
        child.setDescription(description)
        child.setPosition(QPointF(*position))
        if child.algorithm() is None:
            raise SystemExit(f"{alg_id} is not registered: is the despecknet provider loaded?")
        for param, spec in sources.items():
            items = spec if isinstance(spec, list) else [spec]
            child.addParameterSources(param, [source_cls.fromChildOutput(*s) if isinstance(s, tuple)
                                              else source_cls.fromModelParameter(s) for s in items])
        for param, value in (static or {}).items():
            child.addParameterSources(param, [source_cls.fromStaticValue(value)])
        # As the modeler does: every other input parameter holds the algorithm's default, so the model validates
        # (and opens in the modeler without errors). A changed default shows as a change of the regenerated file.
        for definition in child.algorithm().parameterDefinitions():
            if definition.isDestination() or definition.name() in child.parameterSources():
                continue
            if definition.defaultValue() is not None:
                child.addParameterSources(definition.name(), [source_cls.fromStaticValue(definition.defaultValue())])
        model_outputs = {}
        for n, (child_output, (name, text)) in enumerate((outputs or {}).items()):
            out = output_cls(name, text)
            out.setChildId(child_id)
            out.setChildOutputName(child_output)
            out.setPosition(QPointF(position[0] + 220, position[1] + 60 * (n + 1)))
            model_outputs[name] = out
        child.setModelOutputs(model_outputs)
        self.model.addChildAlgorithm(child)
        return child_id

    def write(self, out_dir: str) -> str:
        self.model.setHelpContent(self.help)
        problems = [p for child in self.model.childAlgorithms()
                    for p in self.model.validateChildAlgorithm(child)[1]]
        valid, issues = self.model.validate()
        if not valid or problems:
            raise SystemExit(f"model {self.model.name()} is not valid: {issues + problems}")
        path = os.path.join(out_dir, f"{self.file_name}.model3")
        if not self.model.toFile(path):
            raise SystemExit(f"could not write {path}")
        return path


def despeckle_stats() -> ModelBuilder:
    b = ModelBuilder(
        "despeckle_stats", "Despeckle, then ENL and Cx on polygons",
        "Despeckles a SAR raster with deSpeckNet and measures the equivalent number of looks (ENL) and the "
        "coefficient of variation (Cx) inside homogeneous polygons, on the noisy and on the despeckled raster "
        "side by side: the ENL should rise and Cx fall where the area is really homogeneous.")
    b.input_like("despecknet:despeckle", "INPUT", "INPUT", "SAR raster", "The speckled SAR raster.")
    b.input_like("despecknet:despeckle", "INPUT_DOMAIN", "INPUT_DOMAIN", "Input domain",
                 "What the pixel values are (intensity, amplitude or dB); the statistics read both rasters so.")
    b.input_like("despecknet:specklestats", "POLYGONS", "POLYGONS", "Homogeneous areas (polygons)",
                 "Polygons inside fields, water or other areas of uniform backscatter.")
    b.input_like("despecknet:despeckle", "MODEL", "MODEL", "Model (ONNX; empty: bundled)",
                 "A deSpeckNet ONNX model; empty uses the one bundled with the plugin.")
    b.child("despeckle", "despecknet:despeckle", "Despeckle SAR image", (200, 300),
            {"INPUT": "INPUT", "INPUT_DOMAIN": "INPUT_DOMAIN", "MODEL": "MODEL"},
            {"OUTPUT": ("DESPECKLED", "Despeckled")})
    b.child("stats", "despecknet:specklestats", "ENL and Cx, noisy and despeckled", (450, 450),
            {"INPUTS": ["INPUT", ("despeckle", "OUTPUT")], "INPUT_DOMAIN": "INPUT_DOMAIN", "POLYGONS": "POLYGONS"},
            {"OUTPUT": ("STATISTICS", "Statistics"), "OUTPUT_HTML": ("REPORT", "HTML report")})
    return b


def label_train_despeckle() -> ModelBuilder:
    b = ModelBuilder(
        "label_train_despeckle", "Temporal label, train, despeckle",
        "Trains deSpeckNet on your own area without any clean image: a temporal reference label is built from "
        "a stack of co-registered dates (the mean of the pixels that stayed stable), a model is trained on one "
        "date against that label, and a scene is despeckled with the trained model. Give at least 5 dates; the "
        "paper's defaults train for 30 epochs of 40x40 patches in batches of 128.")
    b.input_like("despecknet:temporallabel", "INPUTS", "DATES", "Co-registered dates",
                 "The dates of one orbit and area, co-registered, same size.")
    # One raster (despeckle's INPUT), since the label is one: train's own INPUT takes several images.
    b.input_like("despecknet:despeckle", "INPUT", "TRAINING_IMAGE", "Date trained against the label",
                 "A noisy date of the stack (one raster), the network's input during training.")
    b.input_like("despecknet:despeckle", "INPUT", "INPUT", "Scene to despeckle with the trained model",
                 "Any scene of the same sensor and domain, for instance one of the dates.")
    b.input_like("despecknet:temporallabel", "INPUT_DOMAIN", "INPUT_DOMAIN", "Input domain",
                 "What the pixel values of every raster are (intensity, amplitude or dB).")
    b.input_like("despecknet:temporallabel", "LOOKS", "LOOKS", "Number of looks of one date (0: estimate)",
                 "Number of looks L of one date, for the stability tests; 0 estimates it.")
    b.input_like("despecknet:train", "EPOCHS", "EPOCHS", "Epochs", "Passes over the training patches.")
    for param, help_text in (("PATCH_SIZE", "Side of the training patches, pixels."),
                             ("STRIDE", "Step between training patches, pixels."),
                             ("BATCH_SIZE", "Patches per training step.")):
        b.input_like("despecknet:train", param, param, b.registry.algorithmById("despecknet:train")
                     .parameterDefinition(param).description(), help_text, advanced=True)
    b.child("label", "despecknet:temporallabel", "Temporal reference label", (200, 300),
            {"INPUTS": "DATES", "INPUT_DOMAIN": "INPUT_DOMAIN", "LOOKS": "LOOKS"},
            {"OUTPUT": ("LABEL", "Temporal label")})
    b.child("train", "despecknet:train", "Train deSpeckNet", (450, 420),
            {"INPUT": ["TRAINING_IMAGE"], "REFERENCE": [("label", "OUTPUT")], "INPUT_DOMAIN": "INPUT_DOMAIN",
             "EPOCHS": "EPOCHS", "PATCH_SIZE": "PATCH_SIZE", "STRIDE": "STRIDE", "BATCH_SIZE": "BATCH_SIZE"},
            {"OUTPUT_MODEL": ("TRAINED_MODEL", "Trained model (ONNX)")})
    b.child("despeckle", "despecknet:despeckle", "Despeckle with the trained model", (700, 540),
            {"INPUT": "INPUT", "INPUT_DOMAIN": "INPUT_DOMAIN", "MODEL": ("train", "OUTPUT_MODEL")},
            {"OUTPUT": ("DESPECKLED", "Despeckled")})
    return b


def finetune_despeckle_folder() -> ModelBuilder:
    b = ModelBuilder(
        "finetune_despeckle_folder", "Fine-tune on one image, then despeckle a folder",
        "Adapts deSpeckNet to a sensor or acquisition mode with one representative image (phase 2, no clean "
        "reference needed), then despeckles every raster of a folder with the tuned model. The folder run "
        "writes <i>name</i>_despeckled.tif per input and a manifest; it uses Dask threads when dask is "
        "installed and runs one scene after the other otherwise.")
    b.input_like("despecknet:finetune", "INPUT", "INPUT", "Image to adapt to",
                 "One representative image of the folder's sensor and mode.")
    b.input_like("despecknet:finetune", "INPUT_DOMAIN", "INPUT_DOMAIN", "Input domain",
                 "What the pixel values are (intensity, amplitude or dB), for the image and the folder.")
    b.input_like("despecknet:finetune", "MODEL", "MODEL", "Base checkpoint (.pt; empty: bundled)",
                 "A PyTorch checkpoint from training or an earlier tuning; empty starts from the bundled one.")
    b.input_like("despecknet:finetune", "PRESET", "PRESET", "Loss preset",
                 "Multi-look for GRD-like data, single-look for SLC intensity.")
    b.input_like("despecknet:despecklebatch", "INPUT_FOLDER", "INPUT_FOLDER", "Folder of SAR rasters",
                 "Every raster of this folder is despeckled with the tuned model.", optional=False)
    for param, help_text in (("EPOCHS", "Passes over the image's patches."),
                             ("PATCH_SIZE", "Side of the training patches, pixels."),
                             ("BATCH_SIZE", "Patches per training step.")):
        b.input_like("despecknet:finetune", param, param, b.registry.algorithmById("despecknet:finetune")
                     .parameterDefinition(param).description(), help_text, advanced=True)
    b.child("finetune", "despecknet:finetune", "Fine-tune deSpeckNet", (200, 300),
            {"INPUT": "INPUT", "INPUT_DOMAIN": "INPUT_DOMAIN", "MODEL": "MODEL", "PRESET": "PRESET",
             "EPOCHS": "EPOCHS", "PATCH_SIZE": "PATCH_SIZE", "BATCH_SIZE": "BATCH_SIZE"},
            {"OUTPUT_MODEL": ("TUNED_MODEL", "Tuned model (ONNX)")})
    b.child("batch", "despecknet:despecklebatch", "Despeckle the folder", (450, 450),
            {"INPUT_FOLDER": "INPUT_FOLDER", "INPUT_DOMAIN": "INPUT_DOMAIN", "MODEL": ("finetune", "OUTPUT_MODEL")},
            {"OUTPUT_FOLDER": ("OUTPUT_FOLDER", "Output folder")})
    return b


BUILDERS = (despeckle_stats, label_train_despeckle, finetune_despeckle_folder)


def main(out_dir: str = OUT_DIR) -> list:
    from qgis.core import QgsApplication

    sys.path.insert(0, ROOT)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QgsApplication([], False)
    app.initQgis()
    from despecknet_qgis.provider import DespeckNetProvider

    provider = DespeckNetProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    os.makedirs(out_dir, exist_ok=True)
    paths = [build().write(out_dir) for build in BUILDERS]
    for path in paths:
        print(f"wrote {os.path.relpath(path, ROOT)}")
    QgsApplication.processingRegistry().removeProvider(provider)
    return paths


if __name__ == "__main__":
    main(*sys.argv[1:2])
