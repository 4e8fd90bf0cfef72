"""ONNX Runtime sessions for deSpeckNet models, on CUDA or CPU."""
from __future__ import annotations

import os

import numpy as np

from .domain import LOG_SCALE, Z_LIMIT
from .errors import DespeckNetError
from .model_info import ModelInfo

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def bundled_model_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "despecknet.onnx")


def _nvidia_driver_present() -> bool:
    # onnxruntime-gpu lists CUDA as available even with no GPU, then prints a load error
    # and falls back; "auto" only tries CUDA where a driver is loaded.
    return os.path.exists("/proc/driver/nvidia/version") or os.name == "nt"


class Despeckler:
    """A loaded deSpeckNet ONNX model. `provider` is the execution provider actually in use."""

    def __init__(
        self, model_path: str | None = None, device: str = "auto", threads: int | None = None, with_noise: bool = True
    ):
        import onnxruntime as ort

        path = model_path or bundled_model_path()
        if device not in DEVICES:
            raise DespeckNetError(f"Unknown device {device!r}: use one of {', '.join(DEVICES)}.")
        if not os.path.isfile(path):
            raise DespeckNetError(f"Model file {path} does not exist.")
        available = ort.get_available_providers()
        if device == "cuda" and CUDA not in available:
            raise DespeckNetError(
                "DEVICE=cuda was asked for, but this ONNX Runtime has no CUDA support "
                f"(providers: {', '.join(available)}). Install onnxruntime-gpu with CUDA 12/13 "
                "and cuDNN 9, or choose DEVICE=cpu or auto."
            )
        want_cuda = device == "cuda" or (device == "auto" and CUDA in available and _nvidia_driver_present())
        providers = [CUDA, CPU] if want_cuda else [CPU]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            model = path if with_noise else _clean_branch_only(path)
            self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for unreadable models
            raise DespeckNetError(
                f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]}). "
                "Use a model exported by despecknet:train or despecknet:finetune."
            ) from exc
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise DespeckNetError(
                "DEVICE=cuda was asked for, but ONNX Runtime could not use the GPU (no NVIDIA GPU, "
                "or the CUDA/cuDNN libraries did not load). Choose DEVICE=cpu or auto, or fix the CUDA setup."
            )
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        expected = list(ModelInfo.OUTPUTS) if with_noise else [ModelInfo.OUTPUTS[0]]
        if names_in != [ModelInfo.INPUT] or names_out != expected:
            raise DespeckNetError(f"{path} has inputs {names_in} and outputs {names_out}, not a deSpeckNet graph.")
        if self.info.log_scale != LOG_SCALE or self.info.z_limit != Z_LIMIT:
            raise DespeckNetError(f"{path} uses a normalisation this plugin version does not know.")
        self.path = path
        self.with_noise = with_noise

    @property
    def radius(self) -> int:
        return self.info.receptive_field // 2

    def predict(self, z: np.ndarray, with_noise: bool = False):
        """z: (H, W) normalised log intensity -> (clean_z, noise_z or None), float32."""
        if with_noise and not self.with_noise:
            raise ValueError("this session was loaded without the noise branch")
        names = list(ModelInfo.OUTPUTS) if with_noise else [ModelInfo.OUTPUTS[0]]
        out = self.session.run(names, {ModelInfo.INPUT: np.ascontiguousarray(z, np.float32)[None, None]})
        return out[0][0, 0], (out[1][0, 0] if with_noise else None)


def _clean_branch_only(path: str) -> bytes:
    """The model without FCN_noise: ONNX Runtime would otherwise compute both branches
    even when only `clean` is fetched, doubling the cost of despeckling."""
    import onnx

    try:
        proto = onnx.load_model(path)
    except Exception:  # noqa: BLE001 - not an ONNX file: let ORT produce the error message
        return path
    graph = proto.graph
    keep_out = [o for o in graph.output if o.name == ModelInfo.OUTPUTS[0]]
    if not keep_out:
        return path
    needed = {ModelInfo.OUTPUTS[0]}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    del graph.output[:]
    graph.output.extend(keep_out)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return proto.SerializeToString()
