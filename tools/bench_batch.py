"""make bench-batch: scenes per minute of the batch path on a LocalCluster of 1 and 2 workers,
and the speed-up over one process running the core's despeckle_raster scene after scene.

Usage: bench_batch.py [--scenes 8] [--size 512] [--workers 1,2] [--model M.onnx] [--out DIR]

Each configuration despeckles the same simulated scenes into its own folder with the
bundled model. The cluster is started and warmed up (model loaded on every worker) before
the clock starts; its start-up time is printed apart. The outputs of every configuration
are checked to be bit-identical to the single process's. Figures depend on what else runs
on the machine: the load average before each run is printed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_scenes(folder: str, count: int, size: int) -> list[str]:
    from despecknet_qgis.core.raster import write_raster
    from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        scene = simulate_reflectivity((size, size), rng, parcel_size=32.0)
        y = scene.reflectivity * simulate_speckle((size, size), 1.0, 0.0, rng)
        paths.append(write_raster(os.path.join(folder, f"scene{i:03d}.tif"), y.astype(np.float32),
                                  (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0), 32633))
    return paths


def load_note() -> str:
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    note = f"load average {load:.2f} on {cores} core(s)"
    if load > 0.5:
        note += f": the {cores} cores are shared with other work, figures are lower than on an idle machine"
    return note


def same_outputs(a: str, b: str) -> bool:
    from osgeo import gdal

    for name in sorted(f for f in os.listdir(a) if f.endswith(".tif")):
        x, y = gdal.Open(os.path.join(a, name)), gdal.Open(os.path.join(b, name))
        if y is None or not np.array_equal(x.ReadAsArray(), y.ReadAsArray(), equal_nan=True):
            return False
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=os.path.join(ROOT, "build", "bench-batch"))
    args = p.parse_args(argv)

    import distributed

    from despecknet_qgis.batch.run import run_batch
    from despecknet_qgis.core.inference import Despeckler
    from despecknet_qgis.core.model_info import bundled_model_path
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    model = args.model or bundled_model_path()
    shutil.rmtree(args.out, ignore_errors=True)
    scenes = make_scenes(os.path.join(args.out, "scenes"), args.scenes, args.size)
    mpix = args.scenes * args.size * args.size / 1e6
    print(f"bench-batch: {args.scenes} scenes of {args.size}x{args.size} ({mpix:.1f} Mpixel), model {model}")

    # one process: the core, scene after scene (ONNX Runtime's default threads: every core)
    single = os.path.join(args.out, "single")
    os.makedirs(single)
    despeckler = Despeckler(model, "cpu", with_noise=False)
    despeckle_raster(scenes[0], os.path.join(args.out, "warmup.tif"), despeckler)
    print(f"  one process ({load_note()})")
    t0 = time.perf_counter()
    for s in scenes:
        despeckle_raster(s, os.path.join(single, os.path.basename(s)[:-4] + "_despeckled.tif"), despeckler)
    base = time.perf_counter() - t0
    base_rate = args.scenes / base * 60
    print(f"  {'one process, sequential':<34} {base:7.1f} s  {base_rate:7.1f} scenes/min  speed-up 1.00")

    ok = True
    for n in [int(v) for v in args.workers.split(",") if v]:
        t0 = time.perf_counter()
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None, silence_logs=50)
        client = distributed.Client(cluster)
        ort_threads = max(1, (os.cpu_count() or 1) // n)
        # warm-up: every worker loads the model once (a real archive pays this once per worker)
        run_batch(scenes[:n], os.path.join(args.out, f"warmup{n}"), model=model, client=client,
                  ort_threads=ort_threads)
        start = time.perf_counter() - t0
        folder = os.path.join(args.out, f"dask{n}")
        print(f"  {n} worker(s) ({load_note()})")
        t0 = time.perf_counter()
        report = run_batch(scenes, folder, model=model, client=client, ort_threads=ort_threads)
        took = time.perf_counter() - t0
        client.close()
        cluster.close()
        same = same_outputs(single, folder) and not report.failed
        ok &= same
        print(f"  {f'Dask LocalCluster, {n} worker(s)':<34} {took:7.1f} s  {args.scenes / took * 60:7.1f} scenes/min  "
              f"speed-up {base / took:4.2f}  (cluster start and warm-up {start:.1f} s; "
              f"{'bit-identical' if same else 'OUTPUTS DIFFER'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
