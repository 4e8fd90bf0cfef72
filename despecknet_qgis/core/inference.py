"""ONNX Runtime sessions for deSpeckNet models, on CUDA or CPU."""
from __future__ import annotations

import hashlib
import math
import os
import threading
import time

import numpy as np

from .domain import LOG_SCALE, Z_LIMIT
from .errors import InputError, ModelError, ResourceError
from .model_info import ModelInfo, bundled_model_path, checkpoint_instead_of_model

DEVICES = ("auto", "cpu", "cuda")
# auto: bf16 on a CPU with AMX-BF16 (core/bf16.py), else float32 ONNX Runtime.
PRECISIONS = ("auto", "fp32", "bf16")
# Self-ensemble: the input as it is and mirrored left-right, up-down and both.
FLIPS = ((), (1,), (0,), (0, 1))
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# ONNX Runtime reports allocation failures as its own exception types (Fail,
# RuntimeException), not as MemoryError; these words in the message mean memory ran out.
_OUT_OF_MEMORY_WORDS = ("alloc", "memory", "out of memory")


def check_device(device: str) -> str:
    """`device` is known and, for "cuda", ONNX Runtime has CUDA support (cheap: no session is made).

    Raises:
        InputError: unknown device; ResourceError: cuda asked for without CUDA support.
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise InputError(f"Unknown `device` {device!r}: use one of {', '.join(DEVICES)}.")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ResourceError(
            "`device`=cuda was asked for, but this ONNX Runtime has no CUDA support "
            f"(providers: {', '.join(available)}). Install onnxruntime-gpu with CUDA 12/13 "
            "and cuDNN 9, or choose the cpu or auto device."
        )
    return device


def check_precision(precision: str) -> str:
    """`precision` is one of PRECISIONS (whether bf16 can run here is decided when a model loads).

    Raises:
        InputError: unknown precision.
    """
    if precision not in PRECISIONS:
        raise InputError(f"Unknown `precision` {precision!r}: use one of {', '.join(PRECISIONS)}.")
    return precision


def _nvidia_driver_present() -> bool:
    # onnxruntime-gpu lists CUDA as available even with no GPU, then prints a load error
    # and falls back; "auto" only tries CUDA where a driver is loaded.
    return os.path.exists("/proc/driver/nvidia/version") or os.name == "nt"


def _check_receptive_field(data: bytes, path: str, stated: int) -> bool:
    """The tiles overlap by the stated receptive field: one smaller than the network's own gives seams
    (a chain of 17 3x3 convolutions stated as 3 gave up to 10.9 dB between tile sizes). Checked where
    the graph is a plain convolution chain (onnx_graph.conv_chain); False where it is not (other graphs
    are probed, _probe_receptive_field)."""
    from .onnx_graph import WireFormatError, conv_chain

    try:
        layers = conv_chain(data, ModelInfo.OUTPUTS[0])
    except WireFormatError:
        return False
    if not layers:
        return False
    actual = 1 + sum(w.shape[2] - 1 for w, _, _ in layers)
    if stated < actual:
        raise ModelError(f"{path} states a receptive field of {stated} pixels, but its clean branch sees "
                         f"{actual}: tiles would show seams. Export the model again with despecknet:train or "
                         "despecknet:finetune.")
    return True


def _check_one_file(data: bytes, path: str) -> None:
    """A model whose weights another file holds (ONNX external data) is refused: the digest recorded in the
    outputs and checked by the batch covered the .onnx only, so new weights passed as the old model."""
    from .onnx_graph import WireFormatError, external_tensors

    try:
        external = external_tensors(data)
    except WireFormatError:
        return  # not a protobuf: ONNX Runtime says so below
    if external:
        raise ModelError(
            f"{path} keeps its weights ({len(external)} tensors, e.g. {external[0]}) in another file (ONNX external "
            "data); despeckling reads a model as one file. Save it as one (in Python: onnx.save(onnx.load(path), "
            "new_path, save_as_external_data=False)), or export it with despecknet:train or despecknet:finetune.")


def _check_input(value_info, path: str) -> None:
    """Tiles of any size go in as float32 (1, 1, H, W): a fixed-size or float16 input failed on the first tile,
    after the statistics pass, with ONNX Runtime's own words."""
    shape = list(value_info.shape or [])
    fixed = [d for d in shape[2:] if isinstance(d, int) and d > 0]
    if value_info.type != "tensor(float)" or len(shape) != 4 or fixed:
        raise ModelError(
            f"{path} takes {value_info.type} input of shape {shape}; despeckling gives it float32 tiles of any size, "
            "(1, 1, height, width). Export it with a float input whose height and width are dynamic (as "
            "despecknet:train and despecknet:finetune do).")


def _probe_receptive_field(session, path: str, stated: int) -> None:
    """What _check_receptive_field cannot read (weights in float16 behind Cast nodes, other operators), two
    network passes on a small probe: the
    centre of a probe must not move when only pixels beyond the stated radius change. A model stating 3 for
    its 35 pixels gave seams of 1.4 dB between tile sizes."""
    radius = stated // 2
    size = 2 * (radius + 2) + 1
    rng = np.random.default_rng(0)
    a = (0.5 * rng.standard_normal((size, size))).astype(np.float32)
    b = a.copy()
    ring = np.ones((size, size), bool)
    ring[2:-2, 2:-2] = False  # the pixels 1 and 2 beyond the stated radius from the centre
    b[ring] = 0.5 * rng.standard_normal(int(ring.sum()))
    name = ModelInfo.OUTPUTS[0]
    try:
        centre = [session.run([name], {ModelInfo.INPUT: z[None, None]})[0][0, 0, radius + 2, radius + 2] for z in (a, b)]
    except Exception:  # noqa: BLE001 - a model that cannot run is reported on its first tile, with its reason
        return
    a, b = float(centre[0]), float(centre[1])
    # NaN or infinite: broken weights, which the first tile names as such
    if math.isfinite(a) and math.isfinite(b) and abs(a - b) > 1e-4 * (1.0 + abs(a)):
        raise ModelError(f"{path} states a receptive field of {stated} pixels, but its output changes with pixels "
                         "farther away: tiles would show seams. Export the model again with despecknet:train or "
                         "despecknet:finetune.")


class Despeckler:
    """A loaded deSpeckNet ONNX model. `provider` is the execution provider actually in use."""

    def __init__(
        self, model_path: str | None = None, device: str = "auto", threads: int | None = None, with_noise: bool = True,
        session_config: dict[str, str] | None = None, precision: str = "auto", self_ensemble: bool = False,
    ):
        """Load a deSpeckNet ONNX model.

        Args:
            model_path: an ONNX model exported by train or fine_tune; None: the bundled models,
                the general one loaded here and the multi-look one when a band needs it (for_looks).
            device: "auto" (CUDA when ONNX Runtime can use it, else CPU), "cpu" or "cuda" (fails
                rather than silently falling back to the CPU).
            threads: ONNX Runtime intra-op threads (None: its default).
            with_noise: keep the speckle branch; False runs FCN_clean alone (half the cost).
            session_config: extra ONNX Runtime session configuration entries.
            precision: "auto" (bf16 where the CPU path runs on a CPU with AMX-BF16 and PyTorch is
                installed, else fp32), "fp32" (ONNX Runtime) or "bf16" (core/bf16.py; CPU only,
                fails rather than falling back). `precision` and `precision_note` say what was chosen.
            self_ensemble: average the network's outputs over the input and its three mirrored
                copies (four passes; measured +0.15 to +0.3 dB on simulated scenes, models/MODEL_CARD.md).

        Raises:
            InputError: unknown device or precision, bf16 asked for with device cuda, missing file
            or a folder; ModelError: not a loadable deSpeckNet model, or bf16 asked for a model
            that is not a plain chain of convolutions; ResourceError: CUDA or bf16 asked for but
            not usable here; MissingPackageError: onnxruntime (or numpy; torch for bf16) is not
            installed.
        """
        from .dependencies import require

        require("despeckle", "Despeckling")
        import onnxruntime as ort

        path = model_path or bundled_model_path()
        self.bundled = model_path is None
        self._options = dict(device=device, threads=threads, with_noise=with_noise, session_config=session_config,
                             precision=precision, self_ensemble=self_ensemble)
        self._multilook: Despeckler | None = None
        self._multilook_lock = threading.Lock()
        if check_precision(precision) == "bf16" and device == "cuda":
            raise InputError("`precision`=bf16 is the CPU's fast path: with `device`=cuda use precision auto or fp32.")
        check_device(device)
        if os.path.isdir(path):
            raise InputError(f"`model_path` {path} is a folder: choose the .onnx model file in it.")
        if not os.path.isfile(path):
            raise InputError(f"Model file {path} (`model_path`) does not exist.")
        if path.lower().endswith((".pt", ".pth")):
            raise ModelError(checkpoint_instead_of_model(path))
        available = ort.get_available_providers()
        want_cuda = device == "cuda" or (device == "auto" and precision != "bf16" and CUDA in available
                                         and _nvidia_driver_present())
        providers = [CUDA, CPU] if want_cuda else [CPU]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The memory pattern is planned and kept per input shape: tiles of a raster come in up
        # to nine shapes (edges), and each kept plan grew the peak memory (419 MB against 269 MB
        # without it over the tile shapes of a 6000x6000 raster) for no measured speed gain.
        options.enable_mem_pattern = False
        if threads:
            options.intra_op_num_threads = threads
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        try:
            # Read once: the session, the checks, the bf16 path and the digest in the outputs' provenance
            # all come from these bytes (a model replaced during a run gave one model's pixels and
            # another's SHA-256).
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ModelError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
        _check_one_file(data, path)
        try:
            model = data if with_noise else _clean_branch_only(data)
            self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for unreadable models
            raise ModelError(
                f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]}). "
                "Use a model exported by despecknet:train or despecknet:finetune."
            ) from exc
        self.provider = self.session.get_providers()[0]
        self._network_seconds = 0.0  # time inside the network, for the benchmark's share of the rest
        if device == "cuda" and self.provider != CUDA:
            raise ResourceError(
                "`device`=cuda was asked for, but ONNX Runtime could not use the GPU (no NVIDIA GPU, "
                "or the CUDA/cuDNN libraries did not load). Choose the cpu or auto device, or fix the CUDA setup."
            )
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        expected = list(ModelInfo.OUTPUTS) if with_noise else [ModelInfo.OUTPUTS[0]]
        if names_in != [ModelInfo.INPUT] or names_out != expected:
            raise ModelError(f"{path} has inputs {names_in} and outputs {names_out}, not a deSpeckNet graph.")
        if self.info.log_scale != LOG_SCALE or self.info.z_limit != Z_LIMIT:
            raise ModelError(f"{path} uses a normalisation this plugin version does not know.")
        _check_input(self.session.get_inputs()[0], path)
        if not _check_receptive_field(data, path, self.info.receptive_field):
            _probe_receptive_field(self.session, path, self.info.receptive_field)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.path = path
        self.with_noise = with_noise
        self.self_ensemble = bool(self_ensemble)
        self._bf16: dict = {}
        self.precision, self.precision_note = self._choose_precision(precision, threads, data)

    def _choose_precision(self, precision: str, threads: int | None, data: bytes) -> tuple[str, str]:
        """(precision in use, why), loading the bf16 branches when they are chosen."""
        from . import bf16

        if precision == "fp32":
            return "fp32", "fp32 asked for"
        if self.provider != CPU:
            return "fp32", f"the network runs on {self.provider}"
        reason = bf16.unavailable_reason()
        if reason:
            if precision == "bf16":
                raise ResourceError(f"`precision`=bf16 was asked for, but {reason}. Use precision auto or fp32.")
            return "fp32", f"bf16 not used: {reason}"
        try:
            for name in ModelInfo.OUTPUTS if self.with_noise else ModelInfo.OUTPUTS[:1]:
                self._bf16[name] = bf16.load_branch(data, name, threads)
        except ModelError as exc:
            self._bf16 = {}
            if precision == "bf16":
                raise
            return "fp32", f"bf16 not used: {exc}"
        return "bf16", "bf16 on this CPU's AMX units" + (" (asked for)" if precision == "bf16" else " (auto)")

    @property
    def radius(self) -> int:
        return self.info.receptive_field // 2

    @property
    def network_seconds(self) -> float:
        """Seconds spent inside the network so far, the multi-look model's included."""
        return self._network_seconds + (self._multilook.network_seconds if self._multilook else 0.0)

    def for_looks(self, looks: float | None) -> "Despeckler":
        """The despeckler for a band whose speckle has `looks` looks.

        Loaded with model_path None (the bundled models), it is the bundled multi-look model
        for `looks` >= model_info.MULTILOOK_MIN_LOOKS, loaded once with the same options;
        otherwise, and for a model given by path, this despeckler itself. Thread-safe: the
        batch path's workers share one despeckler.
        """
        if not self.bundled:
            return self
        path = bundled_model_path(looks)
        if os.path.abspath(path) == os.path.abspath(self.path):
            return self
        with self._multilook_lock:
            if self._multilook is None:
                self._multilook = Despeckler(path, **self._options)
        return self._multilook

    def predict(self, z: np.ndarray, with_noise: bool = False):
        """z: (H, W) normalised log intensity -> (clean_z, noise_z or None), float32 of the same shape.

        Raises:
            ModelError: the network's output has another shape than its input, or holds NaN
                or infinite values, or ONNX Runtime fails on the model;
            ResourceError: ONNX Runtime ran out of memory for a tile this size.
        """
        if with_noise and not self.with_noise:
            raise ValueError("this session was loaded without the noise branch")
        names = list(ModelInfo.OUTPUTS) if with_noise else [ModelInfo.OUTPUTS[0]]
        started = time.perf_counter()
        if self.self_ensemble:
            # Mirrored copies keep the speckle's correlation along rows and columns (a transpose would
            # swap range and azimuth); the network's own errors partly differ between them.
            outs = None
            for axes in FLIPS:
                flipped = [np.flip(v, tuple(a + 2 for a in axes)) for v in self._run(np.flip(z, axes), names)]
                outs = flipped if outs is None else [a + b for a, b in zip(outs, flipped)]
            out = [np.ascontiguousarray(v / len(FLIPS), np.float32) for v in outs]
        else:
            out = self._run(z, names)
        self._network_seconds += time.perf_counter() - started
        return out[0][0, 0], (out[1][0, 0] if with_noise else None)

    def _run(self, z: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """One network pass: the outputs `names`, each (1, 1, H, W), checked."""
        try:
            if self._bf16:
                out = [self._bf16[name].predict(z)[None, None] for name in names]
            else:
                out = self.session.run(names, {ModelInfo.INPUT: np.ascontiguousarray(z, np.float32)[None, None]})
        except (ResourceError, ModelError):
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types (Fail, RuntimeException, ...)
            text = str(exc)
            if isinstance(exc, MemoryError) or any(w in text.lower() for w in _OUT_OF_MEMORY_WORDS):
                raise ResourceError(
                    f"ONNX Runtime ran out of memory on a {z.shape[1]}x{z.shape[0]} tile (margins included) with "
                    f"{self.path}: lower `tile_size` and try again."
                ) from exc
            runtime = "PyTorch (bf16 path)" if self._bf16 else "ONNX Runtime"
            raise ModelError(f"{runtime} failed to run the model {self.path}: {text.splitlines()[0][:300]}") from exc
        for name, value in zip(names, out):
            if value.shape != (1, 1) + z.shape:
                raise ModelError(
                    f"The model {self.path} gave its '{name}' output the shape {tuple(value.shape)} for an input "
                    f"of {(1, 1) + z.shape}: it is not a deSpeckNet model (the outputs must match the input's size)."
                )
            if not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                raise ModelError(
                    f"The model {self.path} gave {bad} NaN or infinite value(s) in its '{name}' output on a "
                    f"{z.shape[1]}x{z.shape[0]} tile: its weights are corrupt or it was not trained for this data. "
                    "Export the model again or use the bundled one."
                )
        return out


def _clean_branch_only(data: bytes) -> bytes:
    """The model without FCN_noise: ONNX Runtime would otherwise compute both branches
    even when only `clean` is fetched, doubling the cost of despeckling.

    Cut out with the protobuf wire format alone (onnx_graph.py): despeckling needs no `onnx`
    package. Anything that is not a graph with a `clean` output is returned as it is, for
    ONNX Runtime to load or to explain why it cannot.
    """
    from .onnx_graph import WireFormatError, keep_output

    try:
        pruned = keep_output(data, ModelInfo.OUTPUTS[0])
    except (WireFormatError, UnicodeDecodeError):
        return data
    return data if pruned is None else pruned
