"""Command line: `python -m despecknet_qgis.batch [SCENES | FOLDERS | @LIST]... --output-dir DIR`.

Exit status: 0 when every scene is done (or was up to date), 1 when some failed (the
manifest and the log say which and why), 2 for a bad command line or a request that
cannot start, 130 on a cancel (Ctrl-C or SIGTERM).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from ..core.errors import Cancelled, DespeckNetError
from ..core.inference import PRECISIONS
from ..core.progress import Progress, terminate_as_cancel
from .options import add_core_flags, options_from_args
from .plan import expand_inputs

EPILOG = """\
Each scene's output is OUTPUT_DIR/<name><suffix>.tif (and <name>_speckle.tif with --noise), written
atomically; OUTPUT_DIR/despecknet-manifest.jsonl records every scene. Running the same command again
skips scenes whose input, model and options are unchanged and retries failures.

Examples:
  python -m despecknet_qgis.batch /data/s1/*.tif --output-dir /data/despeckled
  python -m despecknet_qgis.batch @scenes.txt --output-dir out --scheduler tcp://head:8786 --domain decibel
  python -m despecknet_qgis.batch folder/ --output-dir out --workers 4 --set tile_size=512
"""


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    p = argparse.ArgumentParser(prog="python -m despecknet_qgis.batch", description=(
        "Despeckle many SAR scenes with deSpeckNet on a Dask cluster (a local one by default), one task per "
        "band and scene, with the same core code and results as the QGIS algorithm despecknet:despeckle."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="raster files, SAFE products, GDAL dataset names, folders (their rasters), or @LIST (a text "
                        "file naming one input a line)")
    p.add_argument("--input-list", action="append", default=[], metavar="FILE", help="a text file naming one input a line")
    p.add_argument("--output-dir", "-o", required=True, help="folder for the outputs and the manifest (created if missing)")
    p.add_argument("--model", default=None, help="ONNX deSpeckNet model (default: the bundled one); every worker must "
                                                 "read it at this path")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="ONNX Runtime device (default cpu)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 on workers whose CPU has AMX-BF16 and PyTorch, else fp32 (default auto)")
    p.add_argument("--bands", "--band", dest="bands", default=None, metavar="B[,B...]",
                   type=lambda t: [int(v) for v in t.replace(" ", ",").split(",") if v],
                   help="1-based bands of every scene (default: all), each a task of its own")
    p.add_argument("--noise", action="store_true", help="also write the estimated speckle (<name>_speckle.tif)")
    p.add_argument("--suffix", default="_despeckled", help="added to each input's name (default _despeckled)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any keyword argument of the core's despeckle_raster, e.g. --set tile_size=512")
    c = p.add_argument_group("cluster")
    c.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="an existing Dask scheduler (default: a LocalCluster on 127.0.0.1)")
    c.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (default: one per core)")
    c.add_argument("--threads-per-worker", type=int, default=1, help="LocalCluster threads per worker (default 1)")
    c.add_argument("--ort-threads", type=int, default=None,
                   help="ONNX Runtime threads per task (default: the cores shared among a LocalCluster's threads)")
    c.add_argument("--split-rows", type=int, default=4,
                   help="a large band is split into windows of this many tile rows, each a task (0: never; default 4)")
    c.add_argument("--split-min-mpixels", type=float, default=50.0,
                   help="bands of at least this many Mpixel are split (default 50)")
    r = p.add_argument_group("reruns")
    r.add_argument("--checksum", action="store_true",
                   help="identify unchanged inputs by SHA-256 (default: size and modification time)")
    r.add_argument("--force", action="store_true", help="despeckle again what is up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    names = add_core_flags(p)
    return p, names


def main(argv: list[str] | None = None) -> int:
    parser, names = build_parser()
    args = parser.parse_args(argv)
    try:
        inputs = expand_inputs(args.inputs, args.input_list)
        options = options_from_args(args, names, args.set)
    except DespeckNetError as exc:
        parser.error(str(exc))
    from .run import run_batch

    progress = Progress(log=lambda m: print(m, file=sys.stderr, flush=True))
    previous = signal.getsignal(signal.SIGINT)
    try:
        with terminate_as_cancel():
            report = run_batch(inputs, args.output_dir, model=args.model, device=args.device, precision=args.precision,
                               options=options,
                               bands=args.bands, noise=args.noise, suffix=args.suffix, scheduler=args.scheduler,
                               workers=args.workers, threads_per_worker=args.threads_per_worker,
                               ort_threads=args.ort_threads, checksum=args.checksum, force=args.force,
                               split_rows=args.split_rows, split_min_pixels=int(args.split_min_mpixels * 1e6),
                               progress=progress, bar=None if args.no_progress else sys.stderr)
    except Cancelled as exc:
        print(f"despecknet batch: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("despecknet batch: interrupted; finished scenes are recorded, run the same command to go on.",
              file=sys.stderr)
        return 130
    except DespeckNetError as exc:
        print(f"despecknet batch: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"{len(report.done)} despeckled, {len(report.skipped)} up to date, {len(report.failed)} failed in "
          f"{report.seconds:.1f} s; manifest {report.manifest}")
    for name, error in report.failed.items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
