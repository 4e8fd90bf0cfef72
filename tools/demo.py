"""`make demo`: despeckle the bundled sample scene headless with qgis_process and the bundled model.

Writes demo/sample_despeckled.tif, demo/sample_speckle.tif and demo/quicklook.png
(noisy | despeckled | true reflectivity, same dB stretch), then prints ENL and Cx on the
sample's homogeneous field before and after, and PSNR in dB against the truth.
"""
import json
import os
import subprocess
import sys

import numpy as np
from osgeo import gdal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from despecknet_qgis.core.metrics import coefficient_of_variation, enl, psnr_db  # noqa: E402
from despecknet_qgis.core.quicklook import db_range, write_png  # noqa: E402

DATA = os.path.join(ROOT, "data")
OUT = os.path.join(ROOT, "demo")


def read(path):
    ds = gdal.Open(path)
    return ds.GetRasterBand(1).ReadAsArray().astype(np.float64), ds


def square_window(geojson_path, ds):
    with open(geojson_path) as f:
        ring = json.load(f)["features"][0]["geometry"]["coordinates"][0]
    gt = ds.GetGeoTransform()
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    c0, c1 = int(round((min(xs) - gt[0]) / gt[1])), int(round((max(xs) - gt[0]) / gt[1]))
    r0, r1 = int(round((max(ys) - gt[3]) / gt[5])), int(round((min(ys) - gt[3]) / gt[5]))
    return slice(r0, r1), slice(c0, c1)


def main():
    os.makedirs(OUT, exist_ok=True)
    scene = os.path.join(DATA, "sample_scene.tif")
    out = os.path.join(OUT, "sample_despeckled.tif")
    noise = os.path.join(OUT, "sample_speckle.tif")
    cmd = [os.path.join(ROOT, "tools", "qgis_process"), "--json", "run", "despecknet:despeckle", "--",
           f"INPUT={scene}", "INPUT_DOMAIN=0", f"OUTPUT={out}", f"OUTPUT_NOISE={noise}"]
    print("$", " ".join(cmd[:5]), "...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"qgis_process failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    print(f"despecknet:despeckle ran on {result['results']['PROVIDER']} ({result['results'].get('PRECISION', 'fp32')}); "
          f"output {out}")

    y, ds = read(scene)
    xhat, _ = read(out)
    truth, _ = read(os.path.join(DATA, "sample_reflectivity.tif"))
    win = square_window(os.path.join(DATA, "sample_homogeneous.geojson"), ds)
    before, after = enl(y[win]), enl(xhat[win])
    print(f"homogeneous field ({y[win].size} px): ENL {before:.2f} -> {after:.2f} (x{after / before:.1f}), "
          f"Cx {coefficient_of_variation(y[win]):.3f} -> {coefficient_of_variation(xhat[win]):.3f}")
    valid = y > 0
    print(f"PSNR on dB values vs the true reflectivity: noisy {psnr_db(y[valid], truth[valid]):.2f} dB, "
          f"despeckled {psnr_db(xhat[valid], truth[valid]):.2f} dB")
    lo, hi = db_range(truth)
    png = os.path.join(OUT, "quicklook.png")
    write_png(png, [np.where(valid, y, np.nan), np.where(valid, xhat, np.nan), truth], lo, hi)
    print(f"quick-look (noisy | despeckled | truth, dB {lo:.1f} to {hi:.1f}): {png}")
    if after < 5 * before:
        sys.exit("demo: the despeckled ENL is less than 5 times the input's")


if __name__ == "__main__":
    main()
