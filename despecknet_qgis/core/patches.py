"""Training patches streamed from rasters, block by block, in the network's domain.

An image (and optionally its label and mask) is cut into blocks of a few patches a
side; whole blocks go to training or validation, so validation patches are not
neighbours of training patches. Each epoch reads the blocks in a new random order and
shuffles patches within a small buffer of blocks: memory holds a few blocks, never
the image. The label is normalised with the noisy image's offset, so the network
learns the clean image at the noisy image's level, as despeckle uses it.
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np

from . import domain as dm
from .defaults import RANGES
from .errors import InputError
from .progress import SILENT, Progress
from .raster import Window, band_statistics, check_bands, check_same_grid, nodata_of, open_raster, read, read_intensity, valid_mask

BLOCK_PATCHES = 4  # a block is 4x4 patch positions
MIN_VALID = 0.5  # patches with fewer valid (and labelled) pixels are skipped
SHUFFLE_BLOCKS = 16
# Pixels of the image that phase 2's radiometric gain and ratio-image scores are measured on:
# a quarter Mpixel gives the mean ratio within a fraction of a percent, and scoring the
# whole image cost about 5 s per Mpixel and per candidate.
SCORED_PIXELS = 1 << 18


@dataclass
class ImagePair:
    """One training image: noisy raster, optional label raster and optional mask raster."""

    noisy: str
    band: int = 1
    label: str | None = None
    # None: the image's band where the label has that many bands, else band 1 of a one-band label
    # (temporal_label writes one band per polarisation).
    label_band: int | None = None
    mask: str | None = None
    domain: str = "intensity"
    # Without a label the target is the image itself, shifted by this much in the
    # normalised log domain (phase 2 removes the speckle's log bias E[ln N] this way).
    target_shift: float = 0.0
    # Zeros of the noisy band are nodata where it declares none (raster.input_nodata: GRD borders).
    zero_is_nodata: bool = False


@dataclass
class _Block:
    image: int
    window: Window


class RasterPatches:
    def __init__(self, pairs: list[ImagePair], patch: int = 40, stride: int = 40, validation_fraction: float = 0.0,
                 seed: int = 0, progress: Progress = SILENT):
        RANGES["patch"].check(patch, "patch", "pixels")
        RANGES["stride"].check(stride, "stride", "pixels")
        RANGES["validation_fraction"].check(validation_fraction, "validation_fraction")
        self.pairs, self.patch, self.stride = pairs, patch, stride
        self._datasets: dict = {}
        self.offsets: list[float] = []
        self.label_bands: list[int] = []
        blocks: list[_Block] = []
        for i, pair in enumerate(pairs):
            dm.check_domain(pair.domain, pair.noisy, pair.label)  # the label is read in the image's domain
            ds = open_raster(pair.noisy, progress.without_percent())
            check_bands(ds, [pair.band], pair.noisy)
            for other, what in ((pair.label, "label"), (pair.mask, "mask")):
                if other:
                    check_same_grid(ds, pair.noisy, open_raster(other), f"The {what} {other}")
            self.label_bands.append(self._label_band(pair))
            if ds.RasterXSize < patch or ds.RasterYSize < patch:
                raise InputError(
                    f"{pair.noisy} is {ds.RasterXSize}x{ds.RasterYSize} pixels, smaller than one "
                    f"{patch}x{patch} patch: lower `patch` or use a larger image."
                )
            stats = band_statistics(ds, pair.band, pair.domain, pair.noisy, 512, progress, 0.0, 0.0,
                                    zero_is_nodata=pair.zero_is_nodata)
            self.offsets.append(stats.offset)
            step = stride * BLOCK_PATCHES
            for y in range(0, ds.RasterYSize - patch + 1, step):
                for x in range(0, ds.RasterXSize - patch + 1, step):
                    w = min(step - stride + patch, ds.RasterXSize - x)
                    h = min(step - stride + patch, ds.RasterYSize - y)
                    blocks.append(_Block(i, Window(x, y, w, h)))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(blocks))
        n_val = int(round(validation_fraction * len(blocks)))
        if validation_fraction > 0 and n_val == 0 and len(blocks) > 1:
            n_val = 1
        if n_val >= len(blocks):
            raise InputError("The images are too small to hold out validation patches: lower `validation_fraction`.")
        held_out = [blocks[k] for k in sorted(order[:n_val])]
        self.training_blocks = [blocks[k] for k in sorted(order[n_val:])]
        # Counting reads every block once (about 10 s for a 6000x6000 image here): cancellation is
        # checked between blocks.
        def count(block: _Block) -> int:
            progress.check()
            return self._count(block)

        # blocks of nodata (a GRD border, a label's unstable pixels) hold no patch to validate on
        self.validation_blocks = [b for b in held_out if count(b) > 0]
        if validation_fraction > 0 and not self.validation_blocks:
            progress.info("Warning: no held-out block has enough valid" + (" and labelled" if any(p.label for p in pairs)
                          else "") + " pixels to validate on (or the image is a single block): training runs "
                          "without validation, so the validation loss stays empty and early stopping is off.")
        self.training_patches = sum(count(b) for b in self.training_blocks)
        if self.training_patches == 0:
            raise InputError(
                "No training patch has enough valid pixels (at least half of each patch must be valid"
                + (" and labelled" if any(p.label for p in pairs) else "") + "): check nodata, the label and the mask."
            )

    @staticmethod
    def _label_band(pair: ImagePair) -> int:
        if not pair.label:
            return 1
        count = open_raster(pair.label).RasterCount
        band = pair.label_band or (pair.band if count >= pair.band else 1 if count == 1 else pair.band)
        if not 1 <= band <= count:
            raise InputError(f"The label {pair.label} has {count} band(s), so it has no band {band} for band "
                             f"{pair.band} of {pair.noisy}: give a label with one band, or one band per band of the image.")
        return band

    def _dataset(self, path: str):
        # A GDAL band must not outlive its dataset: keep each one open here.
        if path not in self._datasets:
            self._datasets[path] = open_raster(path)
        return self._datasets[path]

    def _kept(self, mask: np.ndarray) -> np.ndarray:
        """Patches with enough valid (and labelled, unmasked) pixels to train on."""
        return mask.sum(axis=(1, 2, 3)) >= MIN_VALID * self.patch**2

    def _count(self, block: _Block) -> int:
        return int(self._kept(self._read_block(block)[2]).sum())

    def _read_block(self, block: _Block):
        """(noisy, target, mask) patches of one block, float32, shape (n, 1, P, P)."""
        pair, offset, win = self.pairs[block.image], self.offsets[block.image], block.window
        intensity, valid = read_intensity(self._dataset(pair.noisy).GetRasterBand(pair.band), win, pair.domain,
                                          pair.zero_is_nodata)
        y = dm.network_input(intensity, valid, offset)
        if pair.label:
            lint, lvalid = read_intensity(self._dataset(pair.label).GetRasterBand(self.label_bands[block.image]), win,
                                          pair.domain)
            lvalid &= lint > 0
            target = dm.normalise(np.where(lvalid, lint, 1.0), offset)
            valid = valid & lvalid
        else:
            target = np.where(valid, y - np.float32(pair.target_shift), 0.0).astype(np.float32)
        if pair.mask:
            mband = self._dataset(pair.mask).GetRasterBand(1)
            m = read(mband, win)
            valid = valid & valid_mask(m, nodata_of(mband)) & (m > 0)
        p, s = self.patch, self.stride
        ys = range(0, win.h - p + 1, s)
        xs = range(0, win.w - p + 1, s)
        idx = [(r, c) for r in ys for c in xs]
        cut = lambda a: np.stack([a[r : r + p, c : c + p] for r, c in idx])[:, None].astype(np.float32)  # noqa: E731
        return cut(y), cut(target), cut(valid.astype(np.float32))

    def block_images(self, max_pixels: int = SCORED_PIXELS):
        """(noisy z, valid) of whole blocks of the first image, spread evenly over it: for calibration and scoring."""
        blocks = [b for b in self.training_blocks + self.validation_blocks if b.image == 0]
        per_block = max(1, max((b.window.w * b.window.h for b in blocks), default=1))
        every = max(1, math.ceil(len(blocks) * per_block / max_pixels))
        for b in blocks[::every]:
            pair, win = self.pairs[0], b.window
            intensity, valid = read_intensity(self._dataset(pair.noisy).GetRasterBand(pair.band), win, pair.domain,
                                              pair.zero_is_nodata)
            yield dm.network_input(intensity, valid, self.offsets[0]), valid

    def _patches(self, blocks, rng):
        for b in blocks:
            noisy, target, mask = self._read_block(b)
            keep = self._kept(mask)
            yield noisy[keep], target[keep], mask[keep]

    def batches(self, batch_size: int, rng: np.random.Generator, validation: bool = False):
        """Yield (noisy, target, mask) numpy batches; training batches in a random order."""
        blocks = self.validation_blocks if validation else [self.training_blocks[k] for k in rng.permutation(len(self.training_blocks))]
        buffer: list[tuple] = []
        rest = None  # a buffer's last patches short of a batch go on into the next buffer
        for i, chunk in enumerate(self._patches(blocks, rng)):
            buffer.append(chunk)
            last = i == len(blocks) - 1
            if len(buffer) < SHUFFLE_BLOCKS and not last:
                continue
            arrays = [np.concatenate(parts) for parts in zip(*buffer)]
            buffer = []
            order = np.arange(len(arrays[0])) if validation else rng.permutation(len(arrays[0]))
            if rest is not None:
                arrays = [np.concatenate([r, a[order]]) for r, a in zip(rest, arrays)]
                order = np.arange(len(arrays[0]))
            # Only the epoch's last batch may be short: a short batch per buffer took a full optimiser step
            # with a few patches, and made an epoch's steps more than fit planned (ceil(patches / batch)).
            full = len(order) if last else len(order) - len(order) % batch_size
            for k in range(0, full, batch_size):
                sel = order[k : k + batch_size]
                yield arrays[0][sel], arrays[1][sel], arrays[2][sel]
            rest = [a[order[full:]] for a in arrays] if full < len(order) else None

