"""The fast CPU path: the network in bfloat16 on the CPU's AMX matrix units, through PyTorch.

ONNX Runtime's CPU provider computes the convolutions in float32 and already runs at the
CPU's float32 matrix-multiply rate, and it has no bfloat16 convolution. On CPUs with AMX-BF16
(Intel Xeon from the 4th generation on), oneDNN, which PyTorch uses, multiplies bfloat16 with
float32 accumulation several times faster: `make bench` measured 1.24 s per Mpixel against
5.48 in float32 on the benchmark machine's two cores, and `make bench-quality` PSNR within
0.01 dB of float32 in every regime (models/MODEL_CARD.md). Without AMX (oneDNN limited to
AVX512-BF16) it was 1.6 times slower than float32, so `auto` uses it only where AMX is present.

What keeps the accuracy: bfloat16 keeps 8 bits of mantissa, so the last convolution, whose
output is the despeckled log intensity itself, runs in float32 on the float32 copy of its
input; the activations between layers are bfloat16 (the error of each is far below the
speckle the network removes).

What keeps the speed: the activations of a sub-tile of at most SUB_TILE pixels a side
(64 channels) stay near the core's cache (a whole 512x512 tile ran at a third of the speed),
so a tile is cut into such sub-tiles with a margin of the network's receptive radius, which
gives the values a whole-tile pass gives (up to oneDNN's rounding order); each convolution
and its ReLU are one oneDNN call on weights reordered once for it.
"""
from __future__ import annotations

import sys

import numpy as np

from .errors import MissingPackageError, ModelError, ResourceError

# Side of the largest sub-tiles the network runs on (tiles are cut into equal sub-tiles no larger).
# Measured with the fused convolutions on two cores: 0.73 to 0.79 s per Mpixel of sub-tile from 192
# to 320, 0.86 at 384; the larger, the less of the margins is computed twice.
SUB_TILE = 320


def amx_bf16_reason() -> str | None:
    """None when this CPU has AMX-BF16; else why not (the fast path would be slower than fp32)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        flags = line.split(":", 1)[1].split()
                        return None if "amx_bf16" in flags else "this CPU has no AMX-BF16 matrix unit"
        except OSError:
            pass
    try:
        import torch

        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if probe is not None and probe():
            return None
    except ImportError:
        pass
    return "this CPU has no AMX-BF16 matrix unit (or it could not be detected)"


def unavailable_reason() -> str | None:
    """None when the bf16 path can run here; else why not, in words for a log or an error."""
    reason = amx_bf16_reason()
    if reason:
        return reason
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (the bf16 path runs the network through PyTorch)"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn) support"
    return None


class BF16Network:
    """One branch of a deSpeckNet ONNX model, run in bfloat16 by PyTorch on the CPU.

    Built from the ONNX file's own weights (onnx_graph.conv_chain), so it computes what the
    ONNX model computes, whichever way the model was trained or tuned.
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray, bool]], radius: int, threads: int | None = None,
                 fused: bool = True):
        """fused: use oneDNN's fused convolution on prepacked weights where this PyTorch has it;
        False (or a PyTorch without it): the public conv2d and relu operators, slower."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.radius = radius
        self._torch = torch
        mkldnn = getattr(torch.ops, "mkldnn", None)
        pointwise = getattr(mkldnn, "_convolution_pointwise", None)
        reorder = getattr(mkldnn, "_reorder_convolution_weight", None)
        self._body = [(torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16),
                       torch.from_numpy(np.ascontiguousarray(b)).to(torch.bfloat16), relu, w.shape[2] // 2)
                      for w, b, relu in layers[:-1]]
        self._fused = fused and pointwise is not None and reorder is not None
        if self._fused:
            try:
                # oneDNN's own weight layout, computed once: with it and the fused ReLU a 256x256
                # sub-tile took 1.17 s per Mpixel on one core, against 1.56 without.
                self._body = [(reorder(w, [pad, pad], [1, 1], [1, 1], 1, [1, w.shape[1], SUB_TILE, SUB_TILE]), b, relu,
                               pad) for w, b, relu, pad in self._body]
            except RuntimeError:
                self._fused = False
        if not self._fused:  # PyTorch without these oneDNN entry points: the public operators
            self._body = [(w.contiguous(memory_format=torch.channels_last), b, relu, pad)
                          for w, b, relu, pad in self._body]
        # The last convolution stays in float32: in bfloat16 it was 34 % faster per window, but
        # moved mean X̂/X on a real date with bright scatterers by 0.0051 (0.0007 in float32):
        # the output's rounding grows with the log intensity, and the mean follows the brightest.
        weight, bias, _ = layers[-1]
        self._last = (torch.from_numpy(np.ascontiguousarray(weight)), torch.from_numpy(np.ascontiguousarray(bias)),
                      weight.shape[2] // 2)

    def _run(self, z: np.ndarray) -> np.ndarray:
        torch = self._torch
        h = torch.from_numpy(np.ascontiguousarray(z, np.float32))[None, None]
        h = h.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        for w, b, relu, pad in self._body:
            if self._fused:
                h = torch.ops.mkldnn._convolution_pointwise(h, w, b, [pad, pad], [1, 1], [1, 1], 1,
                                                            "relu" if relu else "none", [], "")
            else:
                h = torch.nn.functional.conv2d(h, w, b, padding=pad)
                if relu:
                    h = torch.relu_(h)
        weight, bias, pad = self._last
        out = torch.nn.functional.conv2d(h.float(), weight, bias, padding=pad)
        return out[0, 0].contiguous().numpy()

    def predict(self, z: np.ndarray) -> np.ndarray:
        """z: (H, W) float -> the branch's output, float32 of the same shape.

        Cut into sub-tiles of at most SUB_TILE with `radius` of margin, of equal sizes (a 552-pixel
        window, a 512 tile with its margins, becomes 2 x 2 sub-tiles of about 293, not 320 + 266):
        each output pixel depends only on the receptive field around it, so the result equals a
        whole-window pass.

        Raises:
            ResourceError: PyTorch ran out of memory.
        """
        torch = self._torch
        height, width = z.shape
        try:
            with torch.inference_mode():
                if height <= SUB_TILE and width <= SUB_TILE:
                    return self._run(z)
                out = np.empty((height, width), np.float32)
                for y0, y1 in self._cores(height):
                    for x0, x1 in self._cores(width):
                        ya, xa = max(0, y0 - self.radius), max(0, x0 - self.radius)
                        part = self._run(z[ya:min(height, y1 + self.radius), xa:min(width, x1 + self.radius)])
                        out[y0:y1, x0:x1] = part[y0 - ya:y1 - ya, x0 - xa:x1 - xa]
        except RuntimeError as exc:
            if "memory" in str(exc).lower() or "alloc" in str(exc).lower():
                raise ResourceError(f"PyTorch ran out of memory in the bf16 path on a {width}x{height} tile: "
                                    "lower `tile_size` or use `precision` fp32.") from exc
            raise
        return out

    def _cores(self, length: int) -> list[tuple[int, int]]:
        """[start, stop) ranges of nearly equal size covering `length`, each at most SUB_TILE with its margins."""
        if length <= SUB_TILE:
            return [(0, length)]
        parts = -(-length // (SUB_TILE - 2 * self.radius))
        edges = [round(i * length / parts) for i in range(parts + 1)]
        return list(zip(edges[:-1], edges[1:]))


def load_branch(model: bytes, output: str, radius: int, threads: int | None = None) -> BF16Network:
    """The bf16 network of one output of a serialised ONNX model.

    Raises:
        ModelError: the graph is not a plain chain of convolutions and ReLUs (the bf16 path only
            runs such graphs; use `precision` fp32); MissingPackageError: PyTorch is missing.
    """
    from .onnx_graph import WireFormatError, conv_chain

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingPackageError("The bf16 path needs PyTorch: install it, or use `precision` fp32.") from exc
    try:
        layers = conv_chain(model, output)
    except WireFormatError:
        layers = None
    if not layers:
        raise ModelError(f"The model's '{output}' output is not a plain chain of convolutions and ReLUs, which the "
                         "bf16 path needs: use `precision` fp32 for this model.")
    # oneDNN's fused ReLU turns NaN into 0: corrupt weights would give a finite, wrong image
    # here where ONNX Runtime's output shows the NaN and despeckling stops.
    if not all(np.isfinite(w).all() and np.isfinite(b).all() for w, b, _ in layers):
        raise ModelError(f"The model's '{output}' branch has NaN or infinite weights: its weights are corrupt. Export "
                         "the model again or use the bundled one.")
    return BF16Network(layers, radius, threads)

