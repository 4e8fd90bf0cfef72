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


def bundled_model_path() -> str:
    """The ONNX model shipped with the plugin (read-only to every algorithm)."""
    return os.path.join(_MODELS, "despecknet.onnx")


def bundled_checkpoint_path() -> str:
    """The checkpoint of the bundled model, the default base of fine-tuning (read-only too)."""
    return os.path.join(_MODELS, "despecknet.pt")


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
            return cls(
                version=meta.get("model_version", "?"),
                description=meta.get("description", ""),
                log_scale=float(meta["log_scale"]),
                z_limit=float(meta["z_limit"]),
                receptive_field=int(meta["receptive_field"]),
                training=json.loads(meta.get("training", "{}")),
            )
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{source} has incomplete deSpeckNet metadata ({exc}).") from exc
