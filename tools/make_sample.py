"""Write the bundled sample scene: a simulated single-look Sentinel-1-like intensity image.

data/sample_scene.tif          speckled intensity (1 look, correlated speckle), nodata 0 on a border strip
data/sample_reflectivity.tif   the speckle-free truth X of the same scene
data/sample_homogeneous.geojson a square inside one homogeneous field, for ENL and Cx
Deterministic (fixed seed): `make sample` rewrites identical files.
"""
import json
import os
import sys

import numpy as np
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from despecknet_qgis.core.raster import write_raster  # noqa: E402
from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle  # noqa: E402

SIZE = 512
ORIGIN = (600000.0, 5800000.0)  # UTM 31N, metres
PIXEL = 10.0
EPSG = 32631
BORDER = 24  # columns of nodata on the left, as at the edge of a real swath


def write(path, array, nodata=None):
    write_raster(path, array, (ORIGIN[0], PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL), EPSG, nodata,
                 options=["COMPRESS=DEFLATE", "PREDICTOR=3", "TILED=YES"])


def main():
    out = os.path.join(ROOT, "data")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(2024)
    scene = simulate_reflectivity((SIZE, SIZE), rng, parcel_size=64.0)
    speckle = simulate_speckle((SIZE, SIZE), looks=1.0, correlation=0.7, rng=rng)
    x = scene.reflectivity * 0.8  # sigma0-like scale
    y = x * speckle
    y[:, :BORDER] = 0.0
    write(os.path.join(out, "sample_scene.tif"), y, nodata=0.0)
    write(os.path.join(out, "sample_reflectivity.tif"), x)

    # Largest square inside one homogeneous parcel, away from the nodata strip.
    usable = scene.homogeneous.copy()
    usable[:, : BORDER + 8] = False
    best = (0, None)
    for label in np.unique(scene.parcels[usable]):
        inside = usable & (scene.parcels == label)
        dist = ndimage.distance_transform_cdt(np.pad(inside, 1), metric="chessboard")[1:-1, 1:-1]
        if dist.max() > best[0]:
            best = (int(dist.max()), np.unravel_index(dist.argmax(), dist.shape))
    half, (r, c) = best[0] - 2, best[1]
    x0, x1 = ORIGIN[0] + (c - half) * PIXEL, ORIGIN[0] + (c + half + 1) * PIXEL
    y0, y1 = ORIGIN[1] - (r + half + 1) * PIXEL, ORIGIN[1] - (r - half) * PIXEL
    geojson = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{EPSG}"}},
        "features": [{
            "type": "Feature",
            "properties": {"name": "homogeneous field", "pixels": (2 * half + 1) ** 2},
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        }],
    }
    with open(os.path.join(out, "sample_homogeneous.geojson"), "w") as f:
        json.dump(geojson, f, indent=1)
    print(f"sample scene written to {out}; homogeneous square {2 * half + 1} px wide at row {r}, col {c}")


if __name__ == "__main__":
    main()
