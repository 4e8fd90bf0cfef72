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
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterString,
)

from ..core.defaults import TILE_RANGE, TILE_SIZE
from ..core.domain import DOMAINS
from ..core.errors import DespeckNetError
from ..core.inference import DEVICES, PRECISIONS
from . import output_options
from .base import DOMAIN_LABELS, DespeckNetAlgorithm, source_path


class DespeckleBatchAlgorithm(DespeckNetAlgorithm):
    INPUTS = "INPUTS"
    INPUT_FOLDER = "INPUT_FOLDER"
    INPUT_LIST = "INPUT_LIST"
    INPUT_DOMAIN = "INPUT_DOMAIN"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"
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
                 "suffix": "OUTPUT_FOLDER", "point_targets": "POINT_TARGETS", **output_options.ARGUMENTS}

    def name(self):
        return "despecklebatch"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Despeckle many SAR images (folder, list or Dask cluster)")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "Despeckles every raster of a folder, a list of layers and/or a text file listing rasters, SAFE "
            "products or GDAL dataset names (one a line, # comments), with the same model and options as "
            "<i>Despeckle SAR image</i> (bit-identical results).<br><br>"
            "<b>Dask scheduler</b>: empty runs the scenes in threads of this QGIS when the Python packages dask and "
            "distributed are installed, else one after the other in this process; <i>tcp://host:8786</i> sends "
            "them to a cluster, whose workers must read the inputs, the model and the output folder at the same "
            "paths (see the README, 'Many scenes on a cluster').<br>"
            "<b>Output folder</b>: <i>name</i>_despeckled.tif per input (and <i>name</i>_speckle.tif), and "
            "despecknet-manifest.jsonl recording each scene. Running again skips the scenes whose input, model and "
            "options are unchanged and retries those that failed.<br>"
            "<b>More core options</b>: NAME=VALUE pairs separated by ';' for arguments of the core's "
            "despeckle_raster (e.g. <i>looks=4.4; bands=1</i>); domain, tile_size and point_targets come from "
            "the parameters above.<br>"
            + output_options.HELP +
            "The log ends with a summary: each scene's output, or why it failed. Cancel stops the tasks (on the "
            "cluster too); the scenes already finished stay recorded. A cluster needs the Python packages dask "
            "and distributed (<i>python -m pip install -r requirements-batch.txt</i>)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, self.tr("SAR rasters"),
                                                               QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(self.INPUT_FOLDER, self.tr("Folder of SAR rasters"),
                                                     behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterFile(self.INPUT_LIST, self.tr("Text file listing inputs (one a line)"),
                                                     optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterFile(self.MODEL, self.tr("Model (ONNX; empty: bundled)"),
                                                     extension="onnx", optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), list(DEVICES), defaultValue=0))
        self.add_advanced(QgsProcessingParameterEnum(self.PRECISION, self.tr("Precision"), list(PRECISIONS),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterString(self.SCHEDULER, self.tr("Dask scheduler (empty: this machine)"),
                                                       optional=True))
        self.add_number(self.WORKERS, "Threads on this machine (0: one per core)", 0, advanced=True, integer=True)
        self.add_number(self.TILE_SIZE, "Tile size, pixels", TILE_SIZE, advanced=True, integer=True, allowed=TILE_RANGE)
        for name, label, default in ((self.POINT_TARGETS, "Keep point targets", True),
                                     (self.WRITE_NOISE, "Also write the estimated speckle", False),
                                     (self.FORCE, "Despeckle again what is up to date", False)):
            self.add_advanced(QgsProcessingParameterBoolean(name, self.tr(label), defaultValue=default))
        self.add_advanced(QgsProcessingParameterString(self.OPTIONS, self.tr("More core options (NAME=VALUE; ...)"),
                                                       optional=True))
        output_options.add_output_parameters(self, extent=False)
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

        names = [source_path(layer.source()) for layer in self.parameterAsLayerList(parameters, self.INPUTS, context)]
        folder = self.parameterAsFile(parameters, self.INPUT_FOLDER, context)
        if folder:
            names.append(folder)
        listing = self.parameterAsFile(parameters, self.INPUT_LIST, context)
        if not names and not listing:
            raise QgsProcessingException("Give SAR rasters (INPUTS), a folder of them (INPUT_FOLDER) or a text file "
                                         "listing them (INPUT_LIST).")
        return self.run_core(expand_inputs, names, [listing] if listing else None)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        from ..batch.options import core_parameters, parse_settings
        from ..batch.run import dask_available, missing_dask_message, run_batch

        scheduler = (self.parameterAsString(parameters, self.SCHEDULER, context) or "").strip() or None
        if scheduler and not dask_available():
            raise QgsProcessingException(missing_dask_message(ImportError("No module named 'dask'")))

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
        # only choices away from the core's defaults, so that reruns and the band split see the same options
        defaults = {n: p.default for n, p in core_parameters().items()}
        options.update({k: v for k, v in output_options.output_arguments(self, parameters, context).items()
                        if v != defaults.get(k)})
        threads = self.parameterAsInt(parameters, self.WORKERS, context) or (os.cpu_count() or 1)
        feedback.pushInfo(f"{len(inputs)} input(s) to {output_dir} on "
                          f"{scheduler or f'this machine ({threads} thread(s))'}")
        report = self.run_core(
            run_batch, inputs, output_dir,
            model=self.parameterAsFile(parameters, self.MODEL, context) or None,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            precision=PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)],
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
        for label, outputs in (("despeckled", report.done), ("up to date", report.skipped)):
            for path in outputs:
                feedback.pushInfo(f"  {label}: {path}")
        for name, error in report.failed.items():
            feedback.reportError(f"  failed: {name}: {error}", fatalError=False)
        if report.failed:
            lines = "; ".join(f"{k}: {v}" for k, v in list(report.failed.items())[:5])
            raise QgsProcessingException(
                f"{len(report.failed)} of {len(report.failed) + len(report.done) + len(report.skipped)} scene(s) failed "
                f"({lines}). The others are complete and recorded in {report.manifest}; fix the failed inputs and run "
                "again to retry only those.")
        return {self.OUTPUT_FOLDER: output_dir, self.MANIFEST: report.manifest, self.DONE: len(report.done),
                self.SKIPPED: len(report.skipped), self.FAILED: len(report.failed)}
