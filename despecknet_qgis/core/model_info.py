"""What an exported deSpeckNet ONNX model declares about itself (no torch needed)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .errors import ModelError

FORMAT = "despecknet-onnx/1"

# Architecture constants, here so that inference and the QGIS layer need no torch.
N_BLOCKS = 17
WIDTH = 64
# 17 convolutions of 3x3: a pixel depends on the 35x35 window around it.
RECEPTIVE_RADIUS = N_BLOCKS
RECEPTIVE_FIELD = 2 * RECEPTIVE_RADIUS + 1

_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


# The bundled models: a general one, and one for multi-look products (GRD), chosen for a band
# whose speckle has at least MULTILOOK_MIN_LOOKS looks, as the statistics pass estimates them on
# the band's flattest blocks (point_targets.LooksEstimator). On the simulated GRD-like scenes of
# `make bench-quality` the multi-look model leads the general one (models/MODEL_CARD.md); on
# 1-look and 2-look speckle the general one leads.
GENERAL_MODEL = "despecknet"
MULTILOOK_MODEL = "despecknet_multilook"
MULTILOOK_MIN_LOOKS = 3.0


def _bundled(looks: float | None, ext: str) -> str:
    """The multi-look model's file for `looks` >= MULTILOOK_MIN_LOOKS where it is shipped, else the general one's."""
    if looks is not None and looks >= MULTILOOK_MIN_LOOKS:
        path = os.path.join(_MODELS, MULTILOOK_MODEL + ext)
        if os.path.isfile(path):
            return path
    return os.path.join(_MODELS, GENERAL_MODEL + ext)


def bundled_model_path(looks: float | None = None) -> str:
    """The ONNX model shipped with the plugin for speckle of `looks` looks (None: the general
    model). Read-only to every algorithm."""
    return _bundled(looks, ".onnx")


def bundled_checkpoint_path(looks: float | None = None) -> str:
    """The checkpoint of the bundled model for `looks` looks, the default base of fine-tuning
    (read-only too)."""
    return _bundled(looks, ".pt")


UNFINISHED = ".unfinished"  # NAME.unfinished.pt: the checkpoint a cancelled or failed training keeps


def checkpoint_path_for(onnx_path: str) -> str:
    """The checkpoint training and fine-tuning write beside a model: NAME.onnx -> NAME.pt."""
    return os.path.splitext(onnx_path)[0] + ".pt"


def unfinished_checkpoint_path_for(onnx_path: str) -> str:
    """Where the checkpoint of each finished epoch goes until the phase ends: a cancelled or failed run
    keeps it there (resumable as the initial model) and leaves a model already at the output as it was."""
    return os.path.splitext(onnx_path)[0] + UNFINISHED + ".pt"


def model_beside(checkpoint: str) -> str:
    """The ONNX model training writes beside a checkpoint: NAME.pt (or NAME.unfinished.pt) -> NAME.onnx."""
    stem = os.path.splitext(checkpoint)[0]
    return (stem[:-len(UNFINISHED)] if stem.endswith(UNFINISHED) else stem) + ".onnx"


def checkpoint_instead_of_model(checkpoint: str) -> str:
    """What to say when a checkpoint is given where a model (.onnx) is needed."""
    if os.path.splitext(checkpoint)[0].endswith(UNFINISHED):
        return (f"{checkpoint} is the checkpoint a cancelled or failed training kept: no model was exported from it. "
                f"Train on from it (as the initial model), or use a finished model such as {model_beside(checkpoint)}.")
    return (f"{checkpoint} is a PyTorch checkpoint; despeckling needs the ONNX model written beside it by training or "
            f"fine-tuning ({model_beside(checkpoint)}).")


def bundled_files() -> list[str]:
    """Every bundled model file (ONNX and checkpoint, general and multi-look) that is present."""
    return [os.path.join(_MODELS, stem + ext) for stem in (GENERAL_MODEL, MULTILOOK_MODEL) for ext in (".onnx", ".pt")
            if stem == GENERAL_MODEL or os.path.isfile(os.path.join(_MODELS, stem + ext))]


MAX_RECEPTIVE_FIELD = 1025  # pixels: a tile must hold it, and 4096 is the largest tile


def plugin_version() -> str:
    """The plugin's version, from its metadata.txt (written into every output's provenance)."""
    path = os.path.join(os.path.dirname(_MODELS), "metadata.txt")
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("version="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@dataclass(frozen=True)
class ModelInfo:
    INPUT = "y"
    OUTPUTS = ("clean", "noise")

    version: str
    description: str
    log_scale: float
    z_limit: float
    receptive_field: int
    training: dict

    @classmethod
    def from_metadata(cls, meta: dict, source: str) -> "ModelInfo":
        if meta.get("format") != FORMAT:
            raise ModelError(
                f"{source} is not a deSpeckNet ONNX model (its metadata lacks format={FORMAT}). "
                "Use a model exported by despecknet:train or despecknet:finetune, or leave `model_path` empty "
                "for the bundled model."
            )
        if meta.get("domain") != "log_intensity":
            raise ModelError(f"{source} works in an unsupported domain {meta.get('domain')!r}.")
        try:
            info = cls(
                version=meta.get("model_version", "?"),
                description=meta.get("description", ""),
                log_scale=float(meta["log_scale"]),
                z_limit=float(meta["z_limit"]),
                receptive_field=int(meta["receptive_field"]),
                training=json.loads(meta.get("training", "{}")),
            )
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{source} has incomplete deSpeckNet metadata ({exc}).") from exc
        # The tiles' overlap comes from it: too small gives seams, negative leaves every pixel nodata.
        rf = info.receptive_field
        if rf < 1 or rf % 2 == 0 or rf > MAX_RECEPTIVE_FIELD:
            raise ModelError(f"{source} states a receptive field of {rf} pixels; a deSpeckNet model's is an odd "
                             f"number from 1 to {MAX_RECEPTIVE_FIELD} (the bundled models': 35). Export the model "
                             "again with despecknet:train or despecknet:finetune.")
        return info


PROVENANCE_KEY = "DESPECKNET_ALGORITHM"  # in every raster output; a batch folder scan skips files that have it


def inherited(items: dict | None) -> dict[str, str]:
    """An input's metadata items that an output of it keeps: not this plugin's record of the run that made
    the input (DESPECKNET_*: a despeckled temporal label named its stability rule and risk, a rerun without
    point targets kept the band's POINT_TARGETS_RESTORED). Band statistics are left out by RasterOutput,
    for every output."""
    return {str(k): str(v) for k, v in (items or {}).items() if not str(k).upper().startswith("DESPECKNET_")}


def provenance(algorithm: str, source: str, **items) -> dict[str, str]:
    """The DESPECKNET_* metadata every raster output carries: the algorithm, the plugin version, the
    input, and `items` (DESPECKNET_<NAME>). Also how a folder scan tells the plugin's outputs from inputs."""
    meta = {PROVENANCE_KEY: algorithm, "DESPECKNET_PLUGIN_VERSION": plugin_version(),
            "DESPECKNET_INPUT": os.path.basename(str(source).rstrip("/")) or str(source)}
    meta.update({f"DESPECKNET_{k.upper()}": str(v) for k, v in items.items()})
    return meta
