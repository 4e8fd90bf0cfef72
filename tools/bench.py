"""`make bench`: speed and memory of despeckling (and, when available, tuning) on this CPU.

Prints the machine's fp32 matrix-multiply rate, then for a 2048x2048 raster the
seconds per megapixel, the achieved GFLOP/s (FLOP efficiency) and the peak resident
memory of the despeckle process, for several tile sizes and both precisions (fp32 ONNX
Runtime, and bf16 where this CPU has AMX), beside a Lee filter on the same raster (OTB's
otbcli_Despeckle as a whole process when installed, and the plugin's own classic filter),
and the same at the default tile for a much larger raster (LARGE x LARGE): peak memory must
not grow with the image.
Each run is a fresh process, so peak memory is its own. `--no-tune` skips fine-tuning; `--tune-only` runs only it.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZE = 2048
LARGE = 6000
FLOP_PER_PIXEL_BRANCH = 2 * 9 * (64 + 15 * 64 * 64 + 64)  # one branch, multiply-adds counted as 2


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    VmHWM (Linux) belongs to this program alone; ru_maxrss also keeps the parent's resident
    memory at the fork that started this child (the parent holds the generated rasters).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(n=2048, repeats=5):
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def child_despeckle(src, tile, precision):
    """Run in a subprocess: despeckle src, print timing and peak RSS as JSON."""
    from osgeo import gdal

    from despecknet_qgis.core.inference import Despeckler
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    d = Despeckler(None, "cpu", with_noise=False, precision=precision)
    size = gdal.Open(src).RasterXSize
    with tempfile.TemporaryDirectory(dir=os.path.dirname(src)) as tmp:
        t = time.perf_counter()
        report = despeckle_raster(src, os.path.join(tmp, "out.tif"), d, tile_size=tile)
        seconds = time.perf_counter() - t
    from despecknet_qgis.core.point_targets import MARGIN

    overlap = report_overlap = d.radius + MARGIN  # despeckle_raster's default: the point-target test's window too
    tiles_px = 0
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            w = min(size, x + tile + overlap) - max(0, x - overlap)
            h = min(size, y + tile + overlap) - max(0, y - overlap)
            tiles_px += w * h
    print(json.dumps({"seconds": seconds, "computed_pixels": tiles_px, "provider": report.provider,
                      "precision": report.precision,
                      "overlap": report_overlap, "network_seconds": report.network_seconds,
                      "peak_rss_mb": peak_rss_mb()}))


# A checkpoint that does not fit single-look data (trained on 5-look white speckle): the bundled
# model fits it, so phase 2 would keep it without tuning and time nothing but the scoring.
MISMATCHED_BASE = os.path.join(ROOT, "tests", "data", "source_5looks_uncorrelated.pt")


def child_fine_tune(src, stride):
    """Run in a subprocess: one tuning epoch (acceptance rule on, as in despecknet:finetune) on src."""
    from despecknet_qgis.core.losses import PHASE2_SINGLELOOK
    from despecknet_qgis.core.phases import fine_tune
    from despecknet_qgis.core.training import bf16_supported

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rep = fine_tune(src, os.path.join(tmp, "tuned.onnx"), base_model=MISMATCHED_BASE, weights=PHASE2_SINGLELOOK,
                        looks=1.0, stride=stride,
                        patience=None)
        seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "train_seconds": rep.seconds, "steps": rep.steps, "patches": rep.patches_seen,
                      "bf16": bf16_supported(), "peak_rss_mb": peak_rss_mb()}))


def make_raster(path, size=SIZE):
    from despecknet_qgis.core.raster import write_raster
    from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle

    rng = np.random.default_rng(0)
    base = min(size, SIZE)  # larger rasters repeat a SIZE x SIZE scene under fresh speckle
    x = simulate_reflectivity((base, base), rng, parcel_size=64.0).reflectivity
    reps = -(-size // base)
    x = np.tile(x, (reps, reps))[:size, :size]
    y = (x * simulate_speckle((size, size), 1.0, 0.7, rng)).astype(np.float32)
    del x
    write_raster(path, y, options=["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])


HEADER = (f"{'precision':>9} {'tile':>5} {'s/Mpixel':>9} {'total s':>8} {'GFLOP/s':>8} {'of matmul':>9} "
          f"{'peak RSS MB':>11} {'outside network':>15}")


def despeckle_row(src, tile, rate, mpix, precision="fp32"):
    proc = subprocess.run([sys.executable, __file__, "--child", src, str(tile), precision], capture_output=True,
                          text=True)
    if proc.returncode:
        print(f"{precision:>9} {tile:>5} failed: {proc.stderr.strip().splitlines()[-1][:200]}")
        return None
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    gflops = FLOP_PER_PIXEL_BRANCH * r["computed_pixels"] / r["seconds"] / 1e9
    outside = 1.0 - r["network_seconds"] / r["seconds"]
    print(f"{r['precision']:>9} {tile:>5} {r['seconds'] / mpix:>9.2f} {r['seconds']:>8.1f} {gflops:>8.0f} "
          f"{gflops / rate:>8.0%} {r['peak_rss_mb']:>11.0f} {outside:>15.1%}")
    return r


def lee_rows(src, mpix):
    """A Lee filter on the same raster: OTB's as a whole process (when installed) and the plugin's own."""
    import shutil

    from despecknet_qgis.core.classic_filters import classic_filter_raster

    with tempfile.TemporaryDirectory(dir=os.path.dirname(src)) as tmp:
        otb = shutil.which("otbcli_Despeckle")
        if otb:
            t = time.perf_counter()
            proc = subprocess.run([otb, "-in", src, "-out", os.path.join(tmp, "otb_lee.tif"), "float", "-filter", "lee",
                                   "-filter.lee.rad", "2", "-filter.lee.nblooks", "1"], capture_output=True, text=True)
            seconds = time.perf_counter() - t
            state = f"{seconds / mpix:.2f} s/Mpixel ({seconds:.1f} s, whole process)" if proc.returncode == 0 else \
                f"failed ({proc.stderr.strip()[-200:]})"
            print(f"OTB Lee 5x5 (otbcli_Despeckle): {state}")
        else:
            print("OTB Lee: otbcli_Despeckle not installed (Debian otb-bin)")
        t = time.perf_counter()
        classic_filter_raster(src, os.path.join(tmp, "lee.tif"), "lee", looks=1.0)
        seconds = time.perf_counter() - t
        print(f"plugin Lee 5x5 (despecknet:classicfilter): {seconds / mpix:.2f} s/Mpixel ({seconds:.1f} s)")


def tune_rows(tmp):
    """One phase 2 epoch on a 1024x1024 single-look raster, at the default stride and at stride 10."""
    from despecknet_qgis.core.defaults import PHASE2_TRAINING

    tune_size = 1024
    src = os.path.join(tmp, "tune.tif")
    make_raster(src, tune_size)
    mpix = tune_size * tune_size / 1e6
    print(f"\nfine-tune, one epoch on {tune_size}x{tune_size} ({mpix:.2f} Mpixel), single-look preset, 40x40 patches, batch 128, "
          f"a 5-look model that does not fit (so it is tuned), default learning rate {PHASE2_TRAINING.lr:g}")
    print(f"{'stride':>6} {'patches':>8} {'steps':>6} {'s/Mpixel':>9} {'total s':>8} {'GFLOP/s':>8} {'peak RSS MB':>11}")
    for stride in (PHASE2_TRAINING.stride, 10):
        proc = subprocess.run([sys.executable, __file__, "--child-tune", src, str(stride)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        # forward + backward of both branches: about 3x the forward FLOP of two branches
        gflops = 3 * 2 * FLOP_PER_PIXEL_BRANCH * r["patches"] * 40 * 40 / r["train_seconds"] / 1e9
        print(f"{stride:>6} {r['patches']:>8} {r['steps']:>6} {r['seconds'] / mpix:>9.1f} {r['seconds']:>8.1f} "
              f"{gflops:>8.0f} {r['peak_rss_mb']:>11.0f}")
    print(f"(bf16 autocast: {r['bf16']}; the time includes validation passes and the ONNX export)")


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child_despeckle(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--child-tune":
        child_fine_tune(sys.argv[2], int(sys.argv[3]))
        return
    import torch

    from despecknet_qgis.core.defaults import GDAL_CACHE_BYTES, PHASE2_TRAINING, TILE_SIZE

    threads = torch.get_num_threads()
    rate = matmul_gflops()
    print(f"machine: {os.cpu_count()} logical CPUs, torch threads {threads}")
    print(f"fp32 matrix multiply (torch.mm 2048^3, best of 5): {rate:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        if "--tune-only" in sys.argv:
            return tune_rows(tmp)
        src = os.path.join(tmp, "bench.tif")
        make_raster(src)
        mpix = SIZE * SIZE / 1e6
        from despecknet_qgis.core.bf16 import unavailable_reason

        print(f"\ndespeckle {SIZE}x{SIZE} ({mpix:.1f} Mpixel), bundled model, CPU, FCN_clean only")
        print(HEADER)
        small = {tile: despeckle_row(src, tile, rate, mpix) for tile in (256, 512, 1024)}
        bf16_reason = unavailable_reason()
        fast = {} if bf16_reason else {tile: despeckle_row(src, tile, rate, mpix, "bf16") for tile in (256, 512, 1024)}
        print(f"(GFLOP/s counts {FLOP_PER_PIXEL_BRANCH / 1e6:.2f} MFLOP per computed pixel, tile margins included, "
              "'of matmul' against the fp32 rate above; "
              f"GDAL block cache capped at {GDAL_CACHE_BYTES // 2**20} MB during a run; 'outside network': the share "
              "of the run when the network is not computing: the statistics pass, reading (the next window is read "
              "during the network pass), point targets, conversions, writing, compression and the read-back)")
        if bf16_reason:
            print(f"bf16 not measured: {bf16_reason}")
        lee_rows(src, mpix)

        os.remove(src)
        big = os.path.join(tmp, "bench_large.tif")
        make_raster(big, LARGE)
        big_mpix = LARGE * LARGE / 1e6
        print(f"\ndespeckle {LARGE}x{LARGE} ({big_mpix:.1f} Mpixel), same model, default tile")
        print(HEADER)
        for precision, rows in (("fp32", small), ("bf16", fast)):
            if not rows or not rows.get(TILE_SIZE):
                continue
            r = despeckle_row(big, TILE_SIZE, rate, big_mpix, precision)
            if r:
                print(f"peak RSS at tile {TILE_SIZE}, {precision}: {rows[TILE_SIZE]['peak_rss_mb']:.0f} MB for "
                      f"{SIZE}x{SIZE}, {r['peak_rss_mb']:.0f} MB for {LARGE}x{LARGE} ({big_mpix / mpix:.1f}x the pixels)")
        os.remove(big)
        if "--no-tune" in sys.argv:
            return

        tune_rows(tmp)

if __name__ == "__main__":
    main()
