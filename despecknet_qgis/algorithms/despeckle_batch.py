"""despecknet:despecklebatch - despeckle many rasters (a folder, a list of layers) on a Dask cluster.

Thin: the work is despecknet_qgis.batch.run.run_batch, the same as `python -m
despecknet_qgis.batch`. Dask is imported only when the algorithm runs, so the provider
loads (and every other algorithm works) where dask is missing.
"""
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterString,
)

from ..core.defaults import TILE_RANGE, TILE_SIZE
from ..core.domain import DOMAINS
from ..core.errors import DespeckNetError
from ..core.inference import DEVICES
from .base import DOMAIN_LABELS, DespeckNetAlgorithm


class DespeckleBatchAlgorithm(DespeckNetAlgorithm):
    INPUTS = "INPUTS"
    INPUT_FOLDER = "INPUT_FOLDER"
    INPUT_DOMAIN = "INPUT_DOMAIN"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    TILE_SIZE = "TILE_SIZE"
    POINT_TARGETS = "POINT_TARGETS"
    WRITE_NOISE = "WRITE_NOISE"
    SCHEDULER = "SCHEDULER"
    WORKERS = "WORKERS"
    OPTIONS = "OPTIONS"
    FORCE = "FORCE"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    MANIFEST = "MANIFEST"
    DONE = "DONE"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    ARGUMENTS = {"output_dir": "OUTPUT_FOLDER", "scheduler": "SCHEDULER", "input_path": "INPUTS",
                 "suffix": "OUTPUT_FOLDER", "point_targets": "POINT_TARGETS"}

    def name(self):
        return "despecklebatch"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Despeckle many SAR images (Dask cluster)")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "Despeckles every raster of a folder and/or a list of layers with the same model and options as "
            "<i>Despeckle SAR image</i> (bit-identical results), one task per band and scene on Dask.<br><br>"
            "<b>Dask scheduler</b>: empty runs the tasks in threads of this QGIS; <i>tcp://host:8786</i> sends "
            "them to a cluster, whose workers must read the inputs, the model and the output folder at the same "
            "paths (see the README, 'Many scenes on a cluster').<br>"
            "<b>Output folder</b>: <i>name</i>_despeckled.tif per input (and <i>name</i>_speckle.tif), and "
            "despecknet-manifest.jsonl recording each scene. Running again skips the scenes whose input, model and "
            "options are unchanged and retries those that failed.<br>"
            "<b>More core options</b>: NAME=VALUE pairs separated by ';' for any argument of the core's "
            "despeckle_raster (e.g. <i>looks=4.4; bands=1</i>).<br>"
            "Cancel stops the tasks on the cluster; the scenes already finished stay recorded. Needs the Python "
            "packages dask and distributed (<i>python -m pip install -r requirements-batch.txt</i>)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, self.tr("SAR rasters"),
                                                               QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(self.INPUT_FOLDER, self.tr("Folder of SAR rasters"),
                                                     behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterFile(self.MODEL, self.tr("Model (ONNX; empty: bundled)"),
                                                     extension="onnx", optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), list(DEVICES), defaultValue=0))
        self.addParameter(QgsProcessingParameterString(self.SCHEDULER, self.tr("Dask scheduler (empty: this machine)"),
                                                       optional=True))
        self.add_number(self.WORKERS, "Threads on this machine (0: one per core)", 0, advanced=True, integer=True)
        self.add_number(self.TILE_SIZE, "Tile size, pixels", TILE_SIZE, advanced=True, integer=True, allowed=TILE_RANGE)
        for name, label, default in ((self.POINT_TARGETS, "Keep point targets", True),
                                     (self.WRITE_NOISE, "Also write the estimated speckle", False),
                                     (self.FORCE, "Despeckle again what is up to date", False)):
            param = QgsProcessingParameterBoolean(name, self.tr(label), defaultValue=default)
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        options = QgsProcessingParameterString(self.OPTIONS, self.tr("More core options (NAME=VALUE; ...)"),
                                               optional=True)
        options.setFlags(options.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(options)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Output folder")))
        self.addOutput(QgsProcessingOutputFile(self.MANIFEST, self.tr("Manifest (JSON lines)")))
        for name, label in ((self.DONE, "Scenes despeckled"), (self.SKIPPED, "Scenes up to date"),
                            (self.FAILED, "Scenes failed")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    @staticmethod
    def _check_file(d, value):
        # the base class checks files only; INPUT_FOLDER is a folder
        if d.behavior() == QgsProcessingParameterFile.Folder:
            if isinstance(value, str) and value and not os.path.isdir(value):
                return f"{d.name()}: the folder {value} does not exist."
            return None
        return DespeckNetAlgorithm._check_file(d, value)

    def inputs(self, parameters, context) -> list:
        from ..batch.plan import expand_inputs

        names = [layer.source().split("|")[0] for layer in self.parameterAsLayerList(parameters, self.INPUTS, context)]
        folder = self.parameterAsFile(parameters, self.INPUT_FOLDER, context)
        if folder:
            names.append(folder)
        if not names:
            raise QgsProcessingException("Give SAR rasters (INPUTS) or a folder of them (INPUT_FOLDER).")
        return self.run_core(expand_inputs, names)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        try:
            import dask  # noqa: F401
            import distributed  # noqa: F401
        except ImportError as exc:
            from ..batch.run import missing_dask_message

            raise QgsProcessingException(missing_dask_message(exc)) from exc
        from ..batch.options import parse_settings
        from ..batch.run import run_batch

        inputs = self.inputs(parameters, context)
        output_dir = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        text = self.parameterAsString(parameters, self.OPTIONS, context) or ""
        items = [p.strip() for p in text.split(";") if p.strip()]
        band_items = [p for p in items if p.replace(" ", "").lower().startswith(("bands=", "band="))]
        try:
            options = parse_settings([p for p in items if p not in band_items])
            bands = [int(b) for p in band_items for b in p.split("=", 1)[1].replace(",", " ").split()] or None
        except ValueError as exc:
            raise QgsProcessingException(f"OPTIONS: bands must be band numbers, e.g. bands=1,2 ({exc}).") from exc
        except DespeckNetError as exc:
            raise QgsProcessingException(f"OPTIONS: {exc}") from exc
        options.update({
            "domain": DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)],
            "tile_size": self.parameterAsInt(parameters, self.TILE_SIZE, context),
            "point_targets": self.parameterAsBool(parameters, self.POINT_TARGETS, context),
        })
        scheduler = (self.parameterAsString(parameters, self.SCHEDULER, context) or "").strip() or None
        threads = self.parameterAsInt(parameters, self.WORKERS, context) or (os.cpu_count() or 1)
        feedback.pushInfo(f"{len(inputs)} input(s) to {output_dir} on "
                          f"{scheduler or f'this machine ({threads} thread(s))'}")
        report = self.run_core(
            run_batch, inputs, output_dir,
            model=self.parameterAsFile(parameters, self.MODEL, context) or None,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            options=options, bands=bands,
            noise=self.parameterAsBool(parameters, self.WRITE_NOISE, context),
            scheduler=scheduler,
            # QGIS's own executable cannot be spawned as a Python worker: threads of this process here
            workers=1, threads_per_worker=threads, processes=False,
            force=self.parameterAsBool(parameters, self.FORCE, context),
            progress=self.progress(feedback),
        )
        feedback.pushInfo(f"{len(report.done)} despeckled, {len(report.skipped)} up to date, {len(report.failed)} "
                          f"failed in {report.seconds:.1f} s; manifest {report.manifest}")
        if report.failed:
            lines = "; ".join(f"{k}: {v}" for k, v in list(report.failed.items())[:5])
            raise QgsProcessingException(
                f"{len(report.failed)} of {len(report.failed) + len(report.done) + len(report.skipped)} scene(s) failed "
                f"({lines}). The others are complete and recorded in {report.manifest}; fix the failed inputs and run "
                "again to retry only those.")
        return {self.OUTPUT_FOLDER: output_dir, self.MANIFEST: report.manifest, self.DONE: len(report.done),
                self.SKIPPED: len(report.skipped), self.FAILED: len(report.failed)}
