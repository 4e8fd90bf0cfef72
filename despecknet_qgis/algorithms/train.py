"""despecknet:train - phase 1, supervised training on noisy images and their reference labels."""
from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
)

from ..core.defaults import PHASE1_TRAINING, RANGES, Range
from ..core.domain import DOMAINS
from ..core.inference import DEVICES
from ..core.losses import PHASE1, LossWeights
from ..core.patches import ImagePair
from ..core.phases import train
from .base import DOMAIN_LABELS, DespeckNetAlgorithm, add_training_parameters, training_arguments


class TrainAlgorithm(DespeckNetAlgorithm):
    INPUT, REFERENCE, MASK, BAND, INPUT_DOMAIN = "INPUT", "REFERENCE", "MASK", "BAND", "INPUT_DOMAIN"
    EPOCHS, LEARNING_RATE_END, LEARNING_RATE_STEPS = "EPOCHS", "LEARNING_RATE_END", "LEARNING_RATE_STEPS"
    MU, XI, LAMBDA_TV, INITIAL_MODEL = "MU", "XI", "LAMBDA_TV", "INITIAL_MODEL"
    DEVICE = "DEVICE"
    OUTPUT_MODEL, OUTPUT_CHECKPOINT, VALIDATION_LOSS = "OUTPUT_MODEL", "OUTPUT_CHECKPOINT", "VALIDATION_LOSS"
    ARGUMENTS = {"images": "INPUT", "labels": "REFERENCE", "masks": "MASK", "initial_model": "INITIAL_MODEL"}

    def name(self):
        return "train"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Train deSpeckNet (phase 1, supervised)")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "Trains deSpeckNet on noisy images and clean reference labels (for example from Temporal reference "
            "label), with the paper's loss mu·MSE(label, X̂) + xi·MSE(Y, X̂·N̂) + lambda·TV(X̂). Pixels that are "
            "nodata in the image or the label, or 0 in the optional mask, contribute nothing.<br><br>"
            "Give INPUT and REFERENCE layers in the same order (one label per image). BAND is the band of the "
            "images; a label gives its own band of that number, or its only band (Temporal reference label writes "
            "one). Defaults follow the "
            "paper: 40x40 patches, batch 128, Adam, learning rate 1e-3 down to 1e-4 in 3 steps, mu 1, xi 0.01. "
            "Progress shows the loss per epoch; cancelling keeps the checkpoint of the last finished epoch as "
            "<i>name</i>.unfinished.pt (give it as INITIAL_MODEL to go on: with the same data and settings the training "
            "goes on where it stopped, with its learning-rate schedule and optimiser state) and leaves a model already at OUTPUT_MODEL "
            "as it was.<br>"
            "Outputs: an ONNX model for Despeckle SAR image and, beside it, a .pt checkpoint for fine-tuning or "
            "further training (INITIAL_MODEL). Same seed, same data, same CPU: same model.<br>"
            "<b>Device</b>: auto trains on an NVIDIA GPU when PyTorch can use one (a CUDA build of torch), else on "
            "the CPU; cuda fails rather than silently using the CPU."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUT, self.tr("Noisy images"), QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterMultipleLayers(self.REFERENCE, self.tr("Reference labels (same order)"), QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterMultipleLayers(self.MASK, self.tr("Masks (1 = use; optional, same order)"), QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.BAND, self.tr("Band of the images (and of multi-band labels)"), QgsProcessingParameterNumber.Integer, 1, minValue=1))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS, defaultValue=0))
        self.add_number(self.EPOCHS, "Epochs", PHASE1_TRAINING.epochs, integer=True, allowed=RANGES["epochs"])
        add_training_parameters(self, PHASE1_TRAINING, advanced_lr=False)
        self.add_number(self.LEARNING_RATE_END, "Final learning rate", PHASE1_TRAINING.lr_end, allowed=RANGES["lr_end"])
        for name, label, default in (
            (self.MU, "Weight mu of MSE(label, X̂)", PHASE1.mu),
            (self.XI, "Weight xi of MSE(Y, X̂·N̂)", PHASE1.xi),
            (self.LAMBDA_TV, "Weight lambda of TV(X̂)", PHASE1.lambda_tv),
        ):
            self.add_number(name, label, default, advanced=True)
        self.add_number(self.LEARNING_RATE_STEPS, "Learning-rate stages",
                        PHASE1_TRAINING.lr_steps, advanced=True, integer=True, allowed=Range(1))
        self.addParameter(QgsProcessingParameterFile(self.INITIAL_MODEL, self.tr("Initial checkpoint (.pt, optional)"), extension="pt", optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), list(DEVICES), defaultValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Trained model (ONNX)"), "ONNX models (*.onnx)"))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_CHECKPOINT, self.tr("PyTorch checkpoint")))
        self.addOutput(QgsProcessingOutputNumber(self.VALIDATION_LOSS, self.tr("Best validation loss")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        images = [self.gdal_source(l, "INPUT") for l in self.parameterAsLayerList(parameters, self.INPUT, context)]
        labels = [self.gdal_source(l, "REFERENCE") for l in self.parameterAsLayerList(parameters, self.REFERENCE, context)]
        masks = [self.gdal_source(l, "MASK") for l in self.parameterAsLayerList(parameters, self.MASK, context)]
        if len(images) != len(labels):
            raise QgsProcessingException(f"{len(images)} image(s) but {len(labels)} label(s): give one REFERENCE per INPUT, in the same order.")
        if masks and len(masks) != len(images):
            raise QgsProcessingException(f"{len(masks)} mask(s) for {len(images)} image(s): give one MASK per INPUT or none.")
        band = self.parameterAsInt(parameters, self.BAND, context)
        domain = DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)]
        # The label's band: the same one where the label has it, else band 1 of a one-band label (ImagePair).
        pairs = [ImagePair(img, band, lab, None, masks[i] if masks else None, domain) for i, (img, lab) in enumerate(zip(images, labels))]
        onnx_path = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        weights = LossWeights(*(self.parameterAsDouble(parameters, k, context) for k in (self.MU, self.XI, self.LAMBDA_TV)))
        report = self.run_core(
            train, pairs, onnx_path,
            epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
            lr_end=self.parameterAsDouble(parameters, self.LEARNING_RATE_END, context),
            lr_steps=self.parameterAsInt(parameters, self.LEARNING_RATE_STEPS, context),
            weights=weights,
            initial_model=self.parameterAsFile(parameters, self.INITIAL_MODEL, context) or None,
            progress=self.progress(feedback),
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            **training_arguments(self, parameters, context),
        )
        feedback.pushInfo(f"{report.steps} steps in {report.seconds:.0f} s; model {report.onnx_path}, checkpoint {report.checkpoint_path}")
        return {self.OUTPUT_MODEL: report.onnx_path, self.OUTPUT_CHECKPOINT: report.checkpoint_path,
                self.VALIDATION_LOSS: report.best_validation if report.best_validation is not None else float("nan")}
