"""Peer despecklers for tools/bench_quality.py, run in the separate venv build/peers-venv.

Never imported by the plugin: bench_quality.py starts this script with the peers' Python
(tools/setup_peers.sh installs PyPI's bm3d and deepdespeckling there) and exchanges .npy
files through a JSON job:

    {"threads": 1, "cases": [{"name": ..., "intensity": "in.npy", "looks": L, "sigma_log": s,
      "psd": "psd.npy", "out_dir": "..."}]}

Each case's input is an intensity image without nodata (bench_quality fills nodata with
the nearest valid value, since no peer handles it). Noise parameters come from the
image itself (estimated by bench_quality, never the simulation's truth). Writes
`<out_dir>/<method>.npy` (intensity) per case and prints one JSON status line:
{method: {"available": bool, "reason": str, "seconds": {case: s}, "errors": {case: str}},
"versions": {package: version}}.

Methods:
- bm3d_white: homomorphic BM3D on ln I with white noise of std sigma_log, then the log
  bias E[ln N] = psi(L) - ln L removed (exp(z_hat - bias)).
- bm3d_psd: the same with coloured noise: sigma_psd = the log-speckle power spectrum
  measured on the image's most homogeneous windows (bm3d's convention: mean of the
  array = N * variance).
- sar2sar: deepdespeckling's SAR2SAR on amplitudes, with a gain that puts the median
  amplitude at 45 % of its training log range (utils/constants.py M, m), values clipped
  to that range as SAR2SAR's own code does; the result is divided by the same gain and
  squared back to intensity.
"""
import contextlib
import io
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402


def _log_bias(looks: float) -> float:
    from scipy.special import digamma

    return float(digamma(looks) - np.log(looks))


def bm3d_white(intensity, case):
    import bm3d

    z = np.log(intensity)
    z_hat = bm3d.bm3d(z, sigma_psd=float(case["sigma_log"]))
    return np.exp(z_hat - _log_bias(case["looks"]))


def bm3d_psd(intensity, case):
    import bm3d

    psd = np.load(case["psd"])
    z = np.log(intensity)
    z_hat = bm3d.bm3d(z, sigma_psd=psd)
    return np.exp(z_hat - _log_bias(case["looks"]))


class Sar2Sar:
    def __init__(self):
        import torch

        # Its checkpoint stores numpy scalars: torch.load's weights-only mode must allow them.
        torch.serialization.add_safe_globals([np.core.multiarray.scalar, np.dtype, type(np.dtype("float64"))])
        from deepdespeckling.sar2sar.sar2sar_denoiser import Sar2SarDenoiser
        from deepdespeckling.utils.constants import M, m

        with contextlib.redirect_stdout(io.StringIO()):
            self.denoiser = Sar2SarDenoiser()
        self.M, self.m = M, m
        self.target = float(np.exp(m + 0.45 * (M - m)))

    def __call__(self, intensity, case):
        amplitude = np.sqrt(intensity)
        gain = self.target / float(np.median(amplitude))
        # ... and clipped to that range, as SAR2SAR's own code does (np.clip(im, 0.24, max)): a
        # near-zero amplitude (frequent in 1-look data) far below it makes the network explode.
        scaled = np.clip(gain * amplitude, np.exp(self.m), np.exp(self.M))
        h, w = amplitude.shape
        patch = min(512, (min(h, w) // 32) * 32)  # its U-Net pools 5 times
        stride = patch if patch == min(h, w) else patch // 2
        with contextlib.redirect_stdout(io.StringIO()):
            out = self.denoiser.denoise_image(scaled.astype(np.float32), patch, stride)["denoised"]
        return (np.asarray(out, np.float64) / gain) ** 2


def main():
    job = json.load(open(sys.argv[1]))
    status = {}
    try:
        import torch

        torch.set_num_threads(int(job.get("threads", 2)))
    except Exception:  # noqa: BLE001 - torch absent: sar2sar is reported unavailable below
        pass
    makers = {"bm3d_white": lambda: bm3d_white, "bm3d_psd": lambda: bm3d_psd, "sar2sar": Sar2Sar}
    for name, make in makers.items():
        st = status[name] = {"available": True, "reason": "", "seconds": {}, "errors": {}}
        try:
            if name.startswith("bm3d"):
                import bm3d  # noqa: F401
            method = make()
        except Exception as exc:  # noqa: BLE001 - any import or set-up failure makes the peer unavailable
            st["available"], st["reason"] = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        for case in job["cases"]:
            intensity = np.load(case["intensity"])
            started = time.perf_counter()
            try:
                out = method(intensity, case)
                if out.shape != intensity.shape or not np.isfinite(out).all():
                    raise ValueError(f"bad output (shape {out.shape}, finite {np.isfinite(out).mean():.3f})")
                np.save(os.path.join(case["out_dir"], f"{name}.npy"), out)
                st["seconds"][case["name"]] = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - reported per case, the others go on
                st["errors"][case["name"]] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                traceback.print_exc(file=sys.stderr)
            print(f"peers: {name} {case['name']} {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    from importlib import metadata

    versions = {}
    for pkg in ("bm3d", "deepdespeckling", "torch", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    status["versions"] = versions
    print(json.dumps(status))


if __name__ == "__main__":
    main()
