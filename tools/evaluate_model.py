"""Quality of a deSpeckNet ONNX model on held-out simulated scenes, per speckle regime.

For each regime (looks, correlation): PSNR on dB values against the true reflectivity
(noisy and despeckled), median ENL over the homogeneous parcels, and the mean of the
ratio Y / X_hat (1 = no radiometric bias). Scenes use seeds never used in training.
Prints a Markdown table (the model card's). Usage: evaluate_model.py [model.onnx]
"""
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from despecknet_qgis.core.inference import Despeckler  # noqa: E402
from despecknet_qgis.core.raster import read_band, write_raster  # noqa: E402
from despecknet_qgis.core.metrics import enl, psnr_db  # noqa: E402
from despecknet_qgis.core.simulate import simulate_reflectivity, simulate_speckle  # noqa: E402
from despecknet_qgis.core.tiled_predict import despeckle_raster  # noqa: E402

REGIMES = [(1.0, 0.0), (1.0, 0.8), (2.0, 0.0), (4.4, 0.0), (4.4, 0.7), (10.0, 0.0)]
SEEDS = (90001, 90002)
SIZE = 384


def homogeneous_enl(img, scene):
    values = [enl(img[(scene.parcels == p) & scene.homogeneous]) for p in np.unique(scene.parcels[scene.homogeneous])
              if ((scene.parcels == p) & scene.homogeneous).sum() > 300]
    return float(np.median(values))


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else None
    d = Despeckler(model, "cpu", with_noise=False)
    print(f"model {d.path} (version {d.info.version}); {len(SEEDS)} scenes of {SIZE}x{SIZE} per regime\n")
    print("| looks | correlation | PSNR dB noisy | PSNR dB despeckled | ENL noisy | ENL despeckled | MoR |")
    print("|---|---|---|---|---|---|---|")
    tmp = tempfile.mkdtemp()
    for looks, corr in REGIMES:
        rows = []
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            scene = simulate_reflectivity((SIZE, SIZE), rng, parcel_size=48.0)
            y = scene.reflectivity * simulate_speckle((SIZE, SIZE), looks, corr, rng)
            write_raster(os.path.join(tmp, "y.tif"), y)
            despeckle_raster(os.path.join(tmp, "y.tif"), os.path.join(tmp, "x.tif"), d)
            x = read_band(os.path.join(tmp, "x.tif"))
            rows.append((psnr_db(y, scene.reflectivity), psnr_db(x, scene.reflectivity),
                         homogeneous_enl(y, scene), homogeneous_enl(x, scene), float(np.mean(y / x))))
        m = np.mean(rows, axis=0)
        print(f"| {looks:g} | {corr:g} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.1f} | {m[4]:.3f} |")


if __name__ == "__main__":
    main()
