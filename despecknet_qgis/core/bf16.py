"""The fast CPU path: the network in bfloat16 on the CPU's AMX matrix units, through PyTorch.

ONNX Runtime's CPU provider computes the convolutions in float32 and already runs at the
CPU's float32 matrix-multiply rate, and it has no bfloat16 convolution. On CPUs with AMX-BF16
(Intel Xeon from the 4th generation on), oneDNN, which PyTorch uses, multiplies bfloat16 with
float32 accumulation several times faster: `make bench` measured 0.94 s per Mpixel against
4.38 in float32 on the benchmark machine's two cores (tile 512, I/O included), and
`make bench-quality` PSNR within 0.01 dB of float32 in every regime (models/MODEL_CARD.md).
Without AMX (oneDNN limited to AVX512-BF16) it was 1.6 times slower than float32, so `auto`
uses it only where AMX is present.

What keeps the accuracy: bfloat16 keeps 8 bits of mantissa, so the last convolution, whose
output is the despeckled log intensity itself, runs in float32 on the float32 copy of its
input; the activations between layers are bfloat16 (the error of each is far below the
speckle the network removes).

What keeps the speed: a tile streams through the layers by bands of rows (BAND_PIXELS),
whose 64-channel activations stay near the cores' caches (a whole 512x512 tile in one call
ran at a third of the speed), and each layer computes each pixel once: a band carries the
rows its neighbour needs instead of recomputing margins (session 6's sub-tiles computed 30 %
of the pixels twice). Each convolution and its ReLU are one oneDNN call on weights reordered
once for it, writing straight into the next layer's buffer; widths are rounded up to
WIDTH_STEP columns. The result is the values a whole-tile pass gives (up to oneDNN's
rounding order).
"""
from __future__ import annotations

import sys
import threading

import numpy as np

from .errors import MissingPackageError, ModelError, ResourceError

# Rows of one band are chosen so that a band holds about BAND_PIXELS pixels. Measured on the
# benchmark machine's two cores (s per Mpixel of 550x550 / 1062x1062 windows): 0.98 / 1.03 at
# 9000 pixels (per-call costs), 0.77 / 0.67 at 36864, 0.61 / 0.56 at 98304, 0.78 / 0.64 at
# 150000 (a band's activations no longer stay near the cores' caches).
BAND_PIXELS = 96 * 1024
MIN_BAND_ROWS = 8
# oneDNN's bf16 convolution runs at about 35 ns per pixel on widths that are multiples of 16 and
# up to 5 times slower on some others (176 ns at 539 columns, 105 at 1043, 57 at 531).
WIDTH_STEP = 16


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

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray, bool]], threads: int | None = None,
                 fused: bool = True):
        """fused: use oneDNN's fused convolution on prepacked weights where this PyTorch has it;
        False (or a PyTorch without it): the public conv2d and relu operators, slower."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        mkldnn = getattr(torch.ops, "mkldnn", None)
        pointwise = getattr(mkldnn, "_convolution_pointwise_", None)  # the in-place variant (binary add)
        reorder = getattr(mkldnn, "_reorder_convolution_weight", None)
        self._body = [(torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16),
                       torch.from_numpy(np.ascontiguousarray(b)).to(torch.bfloat16), relu, w.shape[2] // 2)
                      for w, b, relu in layers[:-1]]
        self._channels = [w.shape[0] for w, _, _ in layers[:-1]]  # output channels of each body layer
        self._local = threading.local()  # the band buffers, one pair per thread (batch workers share a network)
        self._fused = fused and pointwise is not None and reorder is not None
        if self._fused:
            try:
                # oneDNN's own weight layout, computed once: with it and the fused ReLU a 256x256
                # tile took 1.17 s per Mpixel on one core, against 1.56 without (session 6).
                self._body = [(reorder(w, [0, pad], [1, 1], [1, 1], 1, [1, w.shape[1], 96 + 2 * pad, 1024]), b, relu,
                               pad) for w, b, relu, pad in self._body]
            except RuntimeError:
                self._fused = False
        if not self._fused:  # PyTorch without these oneDNN entry points: the public operators
            self._body = [(w.contiguous(memory_format=torch.channels_last), b, relu, pad)
                          for w, b, relu, pad in self._body]
        # The last convolution stays in float32: in bfloat16 it was 34 % faster per window, but
        # moved mean X̂/X on a real date with bright scatterers by 0.0051 (0.0007 in float32):
        # the output's rounding grows with the log intensity, and the mean follows the brightest.
        # It has one output channel, for which oneDNN's float32 convolution is slow (78 ns per
        # pixel, two 64-channel bf16 layers' worth), so it runs as one float32 matrix product
        # giving each kernel tap's sum over channels, then shifted sums of the taps (34 ns).
        weight, bias, _ = layers[-1]
        if weight.shape[0] != 1:
            raise ModelError(f"The branch's last convolution has {weight.shape[0]} output channels, not 1: it is not a "
                             "deSpeckNet branch.")
        k = weight.shape[2]
        self._last_taps = torch.from_numpy(np.ascontiguousarray(weight[0].reshape(weight.shape[1], k * k).T))
        self._last_bias = float(bias[0])
        self._last_pad = k // 2

    def _buffers(self, rows: int, width: int):
        """Two flat bfloat16 buffers for `rows` x `width` pixels of the widest layer, kept between
        tiles (fresh memory costs a page fault per page at first use), one pair per thread: the
        batch path's worker threads may run one network at the same time."""
        size = rows * width * max(self._channels)
        pair = getattr(self._local, "pair", None)
        if pair is None or pair[0].numel() < size:
            pair = self._local.pair = tuple(self._torch.zeros(size, dtype=self._torch.bfloat16) for _ in range(2))
        return pair

    @staticmethod
    def _rows(flat, channels: int, width: int):
        """A buffer seen as a channels_last (1, channels, rows, width) tensor: rows slice contiguously."""
        rows = flat.numel() // (channels * width)
        return flat[:rows * width * channels].view(1, rows, width, channels).permute(0, 3, 1, 2)

    def _conv_into(self, dst, h, layer) -> None:
        """One body layer on a band, written into `dst` (zeros, the next layer's buffer rows): valid
        along rows (the band holds its neighbours' rows), zero-padded along columns."""
        w, b, relu, pad = layer
        if self._fused:  # dst = relu(dst + conv(h)), in place: no copy of the band between layers
            self._torch.ops.mkldnn._convolution_pointwise_.binary(dst, h, w, b, [0, pad], [1, 1], [1, 1], 1, "add", 1.0,
                                                                  "relu" if relu else None, [], None)
            return
        out = self._torch.nn.functional.conv2d(h, w, b, padding=(0, pad))
        dst.copy_(self._torch.relu_(out) if relu else out)

    def _last(self, h):
        """The last layer (one output channel) on a band, in float32: (rows - 2 pad, W) float32 tensor."""
        torch = self._torch
        _, channels, rows, width = h.shape
        pad, k = self._last_pad, 2 * self._last_pad + 1
        pixels = h.permute(0, 2, 3, 1).reshape(rows * width, channels)  # channels_last: a view
        taps = torch.mm(self._last_taps, pixels.float().t()).view(k * k, rows, width)
        out = torch.full((rows - 2 * pad, width), self._last_bias)
        for ky in range(k):
            for kx in range(k):
                lo, hi = max(0, pad - kx), min(width, width + pad - kx)
                out[:, lo:hi] += taps[ky * k + kx, ky:ky + rows - 2 * pad, lo + kx - pad:hi + kx - pad]
        return out

    def predict(self, z: np.ndarray) -> np.ndarray:
        """z: (H, W) float -> the branch's output, float32 of the same shape.

        Streamed by bands of rows through all layers at once. Each layer has a buffer of rows:
        the last rows of its previous band (twice its padding), then the rows the layer before
        has just computed (written there in place), and zero rows for the padding above the
        first and below the last row. So each layer computes each pixel once (sub-tiles with
        margins computed 30 % of the pixels twice), a band's activations stay in cache, and the
        result equals a whole-window pass.

        Raises:
            ResourceError: PyTorch ran out of memory.
        """
        torch = self._torch
        height, columns = z.shape
        # Computed on a width rounded up to WIDTH_STEP: the extra columns are zeros in every layer's
        # input, which is the padding right of the last column, so the result is unchanged.
        width = -(-columns // WIDTH_STEP) * WIDTH_STEP
        band = max(MIN_BAND_ROWS, BAND_PIXELS // width)
        out = np.empty((height, columns), np.float32)
        row = 0
        pads = [layer[3] for layer in self._body] + [self._last_pad]
        try:
            with torch.inference_mode():
                x = torch.zeros((1, 1, height, width), dtype=torch.bfloat16)
                # a fresh array: a mirrored 1-pixel-wide view keeps a negative stride through ascontiguousarray
                x[0, 0, :, :columns] = torch.from_numpy(np.array(z, np.float32, order="C"))
                # Two buffers, each layer reading one and writing the other: a layer's rows are its
                # carried rows (its previous band's last 2 pad rows) then those just computed.
                capacity = band + (len(pads) + 2) * max(pads)
                pair = self._buffers(capacity, width)
                carry = [torch.zeros((1, 1 if i == 0 else self._channels[i - 1], pad, width), dtype=torch.bfloat16)
                         .contiguous(memory_format=torch.channels_last) for i, pad in enumerate(pads)]
                for start in range(0, height, band):
                    rows = min(band, height - start)
                    final = start + rows >= height
                    channels = 1
                    src, dst = pair
                    held = carry[0].shape[2]
                    buf = self._rows(src, channels, width)
                    buf[:, :, :held].copy_(carry[0])
                    buf[:, :, held:held + rows].copy_(x[:, :, start:start + rows])
                    filled = held + rows
                    for i, pad in enumerate(pads):
                        buf = self._rows(src, channels, width)
                        if final:  # the padding below the last row
                            buf[:, :, filled:filled + pad].zero_()
                            filled += pad
                        ready = filled - 2 * pad
                        if ready <= 0:  # too few rows yet for one output row: carry them all
                            carry[i] = buf[:, :, :filled].clone(memory_format=torch.channels_last)
                            break
                        carry[i] = buf[:, :, ready:filled].clone(memory_format=torch.channels_last)
                        if i == len(pads) - 1:
                            out[row:row + ready] = self._last(buf[:, :, :filled])[:, :columns].numpy()
                            row += ready
                            break
                        channels = self._channels[i]
                        held = carry[i + 1].shape[2]
                        nxt = self._rows(dst, channels, width)
                        nxt[:, :, :held].copy_(carry[i + 1])
                        target = nxt[:, :, held:held + ready]
                        target.zero_()
                        self._conv_into(target, buf[:, :, :filled], self._body[i])
                        if width > columns:
                            target[:, :, :, columns:].zero_()
                        filled = held + ready
                        src, dst = dst, src
        except RuntimeError as exc:
            if "memory" in str(exc).lower() or "alloc" in str(exc).lower():
                raise ResourceError(f"PyTorch ran out of memory in the bf16 path on a {columns}x{height} tile: lower "
                                    "`tile_size` or use `precision` fp32.") from exc
            raise
        if row != height:
            raise ModelError(f"The bf16 path gave {row} of {height} rows: the model's layers do not keep the "
                             "image size.")
        return out


def load_branch(model: bytes, output: str, threads: int | None = None) -> BF16Network:
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
    # The bf16 network runs body layers (conv + ReLU) and a last convolution without one: other shapes
    # would be computed wrongly (a final ReLU was dropped: 4.8 dB off) or not at all (a single conv).
    if len(layers) < 2 or layers[-1][2]:
        raise ModelError(f"The model's '{output}' branch is not convolutions with ReLUs ending in one convolution "
                         "without a ReLU, which the bf16 path runs: use `precision` fp32 for this model.")
    # oneDNN's fused ReLU turns NaN into 0: corrupt weights would give a finite, wrong image
    # here where ONNX Runtime's output shows the NaN and despeckling stops.
    if not all(np.isfinite(w).all() and np.isfinite(b).all() for w, b, _ in layers):
        raise ModelError(f"The model's '{output}' branch has NaN or infinite weights: its weights are corrupt. Export "
                         "the model again or use the bundled one.")
    return BF16Network(layers, threads)

