"""despecknet:finetune - phase 2, one-epoch unsupervised adaptation to the user's own image."""
import contextlib

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core.defaults import PHASE2_PRESETS, PHASE2_TRAINING, RANGES
from ..core.domain import DOMAINS
from ..core.files import KeepPrevious, check_outputs, writing_lock
from ..core.inference import DEVICES, Despeckler, check_device
from ..core.losses import LossWeights
from ..core.phases import bundled_checkpoint_path, checkpoint_path_for, fine_tune, training_device
from ..core.progress import terminate_as_cancel
from ..core.tiled_predict import despeckle_raster
from . import output_options
from .base import DOMAIN_LABELS, DespeckNetAlgorithm, add_training_parameters, training_arguments


class FineTuneAlgorithm(DespeckNetAlgorithm):
    INPUT, BAND, INPUT_DOMAIN, MODEL, PRESET = "INPUT", "BAND", "INPUT_DOMAIN", "MODEL", "PRESET"
    MU, XI, LAMBDA_TV, EPOCHS, PATIENCE, DEVICE = "MU", "XI", "LAMBDA_TV", "EPOCHS", "PATIENCE", "DEVICE"
    LOOKS = "LOOKS"
    OUTPUT_MODEL, OUTPUT_CHECKPOINT, OUTPUT = "OUTPUT_MODEL", "OUTPUT_CHECKPOINT", "OUTPUT"
    VALIDATION_LOSS, PROVIDER = "VALIDATION_LOSS", "PROVIDER"
    ARGUMENTS = {"image": "INPUT", "base_model": "MODEL", "input_path": "INPUT", "model_path": "OUTPUT_MODEL",
                 **output_options.ARGUMENTS}

    def name(self):
        return "finetune"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Fine-tune deSpeckNet on an image (phase 2)")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "Adapts a trained deSpeckNet to a new image, sensor or speckle regime without any clean "
            "reference: one epoch over patches of the image itself, with the loss "
            "mu·MSE(Y, X̂) + xi·MSE(Y, X̂·N̂) + lambda·TV(X̂).<br><br>"
            "<b>Preset</b>: multi-look (mu 0.01, xi 1, lambda 0) for GRD-like data; single-look (adds TV, "
            "lambda 1e-4) for SLC intensity; custom uses MU, XI, LAMBDA_TV.<br>"
            "<b>Looks</b>: number of looks L of the image; it removes the speckle's log bias from the target so "
            "the mean radiometry is kept, and the ratio image is judged against L-look speckle. 0 estimates L on the "
            "band's flattest blocks, as despeckle does (where it cannot, the preset's: 4.4 for multi-look, 1 for "
            "single-look, no correction for custom). A given L far from the estimate is warned.<br>"
            "<b>Model</b>: a .pt checkpoint from training or an earlier tuning; empty means the bundled one "
            "that despeckle chooses for the band's estimated looks (the multi-look model for 3 or more).<br>"
            "Part of the image (VALIDATION_FRACTION) is held out and its loss reported. PATIENCE > 0 stops "
            "early when that loss stops improving and keeps the best weights; it is off by default because "
            "the held-out loss mostly measures reconstruction, which the noisy image itself minimises. "
            "Tuned weights are scaled so that the mean of Y/X̂ on the image is 1 (no radiometric bias).<br>"
            "<b>Never worse than the base</b>: with the number of looks known, the ratio image Y/X̂ judges. A "
            "base model whose ratio image already spreads like L-look speckle, with a mean not above 1.1, is "
            "kept exactly as it is (tuning it would only cost quality); tuned weights are kept only when their "
            "ratio image is closer to speckle than the base's. The log says which was kept and why. "
            "Nodata is excluded.<br>"
            "Outputs: the tuned ONNX model (for Despeckle SAR image), its .pt checkpoint, and optionally the "
            "image despeckled with the tuned model. Every output is checked before tuning starts; if despeckling "
            "fails after tuning, the model files that were there before are put back.<br>"
            "<b>Device</b>: auto tunes on an NVIDIA GPU when PyTorch can use one and despeckles with ONNX Runtime's "
            "CUDA provider when it can; cuda fails rather than silently using the CPU.<br>"
            + output_options.HELP
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Image to adapt to")))
        self.addParameter(QgsProcessingParameterBand(self.BAND, self.tr("Band (empty: 1)"), 1, self.INPUT, optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS, defaultValue=0))
        self.addParameter(QgsProcessingParameterFile(self.MODEL, self.tr("Base checkpoint (.pt; empty: bundled)"), extension="pt", optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.PRESET, self.tr("Loss preset"), [p.title("MU, XI and LAMBDA_TV as given") for p in PHASE2_PRESETS], defaultValue=0))
        start = PHASE2_PRESETS[0].weights  # the custom weights start from the first preset's
        for name, label, default in ((self.MU, "MU (custom preset)", start.mu), (self.XI, "XI (custom preset)", start.xi),
                                     (self.LAMBDA_TV, "LAMBDA_TV (custom preset)", start.lambda_tv)):
            self.add_number(name, label, default, advanced=True)
        self.add_number(self.LOOKS, "Number of looks L (0: estimated)", 0.0)
        self.add_number(self.EPOCHS, "Epochs", PHASE2_TRAINING.epochs, integer=True, allowed=RANGES["epochs"])
        add_training_parameters(self, PHASE2_TRAINING, advanced_lr=True)
        self.add_number(self.PATIENCE, "Early stopping: evaluations without improvement (0: off)", 0, advanced=True, integer=True)
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device (tuning and the despeckled output)"), list(DEVICES), defaultValue=0))
        output_options.add_output_parameters(self, extent=False)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Tuned model (ONNX)"), "ONNX models (*.onnx)"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Despeckled with the tuned model"), optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_CHECKPOINT, self.tr("PyTorch checkpoint")))
        self.addOutput(QgsProcessingOutputNumber(self.VALIDATION_LOSS, self.tr("Best validation loss")))
        self.addOutput(QgsProcessingOutputString(self.PROVIDER, self.tr("ONNX Runtime execution provider used")))

    @classmethod
    def preset_weights(cls, index: int, mu: float, xi: float, lambda_tv: float) -> LossWeights:
        preset = PHASE2_PRESETS[index].weights
        return preset if preset is not None else LossWeights(mu, xi, lambda_tv)

    @classmethod
    def looks_arguments(cls, index: int, looks: float) -> dict:
        """LOOKS as given, or (0) the band's own, estimated; the preset's nominal looks where they cannot be."""
        return {"looks": looks or None, "estimate_looks": not looks, "default_looks": PHASE2_PRESETS[index].looks}

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layer = self.raster_layer(parameters, self.INPUT, context, feedback=feedback)
        source = self.gdal_source(layer, "INPUT")
        domain = DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)]
        band = self.parameterAsInt(parameters, self.BAND, context) or 1
        preset = self.parameterAsEnum(parameters, self.PRESET, context)
        weights = self.preset_weights(preset, *(self.parameterAsDouble(parameters, k, context) for k in (self.MU, self.XI, self.LAMBDA_TV)))
        looks = self.looks_arguments(preset, self.parameterAsDouble(parameters, self.LOOKS, context))
        feedback.pushInfo(f"loss weights: mu {weights.mu}, xi {weights.xi}, lambda {weights.lambda_tv}; looks "
                          f"{looks['looks'] or 'estimated on the band'}")
        onnx_path = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context) or None
        base = self.parameterAsFile(parameters, self.MODEL, context) or None
        # Every output, and the device of the despeckling step, is checked before tuning.
        self.run_core(check_outputs, {"output_path": output, "onnx_path": onnx_path, "checkpoint_path": checkpoint_path_for(onnx_path)},
                      {"input_path": source, "base_model": base or bundled_checkpoint_path()})
        device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]
        self.run_core(training_device, device)  # "cuda" where torch cannot use it fails before any work
        if output:
            self.run_core(check_device, device)
        patience = self.parameterAsInt(parameters, self.PATIENCE, context)
        choices = output_options.output_arguments(self, parameters, context)
        train_feedback = self.progress(feedback)
        if output:
            # tuning takes most of the time; despeckling the rest
            train_feedback = self.progress_part(feedback, 0.0, 70.0)
        # The model's writing lock for the whole job: restoring the previous pair after a failed despeckling
        # step undid another run's finished fine-tune into the same name.
        with contextlib.ExitStack() as job:
            self.run_core(job.enter_context, writing_lock(onnx_path, "a fine-tune"))  # its refusal in QGIS's terms
            return self._tune(parameters, context, feedback, source, band, domain, weights, looks, base, onnx_path,
                              output, device, patience, choices, train_feedback)

    def _tune(self, parameters, context, feedback, source, band, domain, weights, looks, base, onnx_path, output,
              device, patience, choices, train_feedback):
        previous = KeepPrevious(onnx_path, checkpoint_path_for(onnx_path)) if output else None
        with terminate_as_cancel():
            try:
                report = self.run_core(
                    fine_tune, source, onnx_path, band=band, domain=domain, base_model=base,
                    weights=weights, **looks, epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
                    patience=patience or None, progress=train_feedback, zero_is_nodata=choices["zero_is_nodata"],
                    device=device,
                    **training_arguments(self, parameters, context),
                )
            except BaseException:
                if previous is not None:
                    previous.release()  # a failed tuning leaves what fine_tune leaves (a cancel keeps its checkpoint)
                raise
            feedback.pushInfo(f"tuned in {report.seconds:.1f} s ({report.steps} steps, {report.patches_seen} patches"
                              f"{', stopped early' if report.stopped_early else ''}); model {onnx_path}")
            results = {self.OUTPUT_MODEL: onnx_path, self.OUTPUT_CHECKPOINT: report.checkpoint_path,
                       self.VALIDATION_LOSS: report.best_validation if report.best_validation is not None else float("nan"),
                       self.PROVIDER: ""}
            if output:
                try:
                    despeckler = self.run_core(Despeckler, onnx_path, device, with_noise=False)
                    done = self.run_core(despeckle_raster, source, output, despeckler, bands=[band], domain=domain,
                                         progress=self.progress_part(feedback, 70.0, 100.0),
                                         algorithm="despecknet:finetune", **choices)
                except BaseException:
                    previous.restore()  # all or nothing: no tuned model without the despeckled image asked for
                    raise
                previous.release()
                results[self.OUTPUT] = output
                results[self.PROVIDER] = done.provider
        return results
