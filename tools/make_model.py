"""Train the bundled deSpeckNet (phase 1) on realistic simulated SAR scenes, resumably.

Training is long on a CPU (about 2 s a step here), so it adds up across runs: the whole
training state (weights, Adam moments, step, data generator, history) is saved every
`--save-every` steps to a state file outside the work tree
(`$DESPECKNET_TRAINING_STATE`, default `~/.cache/despecknet_qgis/training_state.pt`),
and the next run continues from it. Without a state file, training starts from the
bundled checkpoint (`--init`, or `--scratch` for random weights).

Candidates go to `build/model/` (ONNX, checkpoint, log) every `--candidate-every`
steps and at the end; the bundled model in `models/` is replaced only by `--publish`,
after `make bench-quality` has shown that the candidate is better. SIGTERM and Ctrl-C
save the state before leaving.

    make model                                   # continue (or start) up to 4000 steps
    tools/make_model.py --steps 8000             # extend the same stage
    tools/make_model.py --publish                # candidate -> models/ (after the benchmark)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from despecknet_qgis.core import domain as dm  # noqa: E402
from despecknet_qgis.core.errors import OutputError  # noqa: E402
from despecknet_qgis.core.export import export_onnx  # noqa: E402
from despecknet_qgis.core.files import partial_path, remove_quietly, writing_lock  # noqa: E402
from despecknet_qgis.core.losses import PHASE1_BUNDLED  # noqa: E402
from despecknet_qgis.core.model import DeSpeckNet  # noqa: E402
from despecknet_qgis.core.simulate import SimulatedPatches, patch_cutter  # noqa: E402
from despecknet_qgis.core.training import (  # noqa: E402
    Trainer, TrainingRecord, load_checkpoint, save_checkpoint, seed_everything,
)
from tools import real_data  # noqa: E402

VERSION = "0.5.0"
DESCRIPTION = ("deSpeckNet phase 1 on realistic simulated SAR scenes (textured fields, deterministic point "
               "scatterers; 1 to 10 looks, with and without spatial correlation) and, for a quarter of each batch "
               "of its last two stages, real Sentinel-1 single-look dates against their temporal labels, the last "
               "stage with a structure (SSIM) term and the local energy term on them")
# The multi-look model (model_info.MULTILOOK_MODEL), chosen for bands with 3 looks or more.
MULTILOOK_VERSION = "0.6.0-multilook"
MULTILOOK_DESCRIPTION = ("deSpeckNet phase 1 for multi-look products (GRD): the general model 0.4.0 trained on "
                         "realistic simulated scenes with 4.4 to 5.5 looks and spatially correlated speckle, then "
                         "with a finer texture floor (1 dB) on 3 to 7 looks, a fifth of them white speckle")
STATE_FORMAT = "despecknet-training-state/1"
DEFAULT_STATE = os.environ.get("DESPECKNET_TRAINING_STATE",
                               os.path.join(os.path.expanduser("~"), ".cache", "despecknet_qgis", "training_state.pt"))
CANDIDATE_DIR = os.path.join(ROOT, "build", "model")
BUNDLED_DIR = os.path.join(ROOT, "models")


# Speckle regimes of the training patches, drawn uniformly from this list. The simulator's own mix
# (core/simulate.sample_regime) gives 2/7 of the patches 1 look and 2/5 white speckle: the squared
# log error of 1-look patches is several times that of 5-look ones, so they drove the gradient,
# and the model trailed measured-spectrum BM3D by 1.3 dB on correlated 5-look (GRD-like) data
# while leading it by 1 dB on 1-look data. Real products are correlated (oversampled SLC,
# resampled GRD): "balanced" gives each number of looks the same share and 4/5 of the patches
# correlated speckle.
REGIMES = {
    "simulator": None,
    "balanced": [(looks, corr) for looks in (1.0, 2.0, 3.0, 4.4, 5.0, 6.0, 10.0) for corr in (0.0, 0.5, 0.7, 0.7, 0.9)],
    # Diagnostic: a model that knows its regime (GRD-like only) bounds what regime conditioning could gain.
    "grd_only": [(looks, corr) for looks in (4.4, 5.0, 5.5) for corr in (0.6, 0.7, 0.8)],
    # The multi-look model's range (3 looks or more), a fifth of it white: trained on grd_only alone it
    # brightened white multi-look speckle by 7-11 % (mean X̂/X at 3 and 5 white looks).
    "multilook": [(looks, corr) for looks in (3.0, 4.4, 5.0, 5.5, 7.0) for corr in (0.0, 0.6, 0.7, 0.7, 0.8)],
}


class TemporalPairs:
    """Real single-look dates, each against the mean of its site's other dates, on stable pixels.

    The paper's temporal label, leave-one-out: the mean of the other K dates has speckle
    independent of the input date, so a squared error in the log domain against it, debiased
    per pixel by E[ln mean] - ln X = digamma(K) - ln K, has the same minimiser as against the
    true reflectivity (its residual speckle only adds a constant). Pixels that the plugin's
    own temporal-label rule (omnibus test) finds changed over the dates are masked out of the
    loss. Only rows [0, rows) are used (default real_data.TRAIN_ROWS: make bench-quality scores the rest).
    Real speckle correlation, real texture and real point scatterers are what the simulator
    only approximates; on those dates the simulation-only model painted fields flat.
    """

    def __init__(self, patch: int, rng: np.random.Generator, real_dir: str = real_data.REAL_DIR,
                 sites: tuple[str, ...] = real_data.REAL_SITES, rows: int = real_data.TRAIN_ROWS):
        import tempfile

        from osgeo import gdal

        from despecknet_qgis.core.temporal_label import temporal_label

        self.patch, self.rng, self.dm = patch, rng, dm
        k = real_data.REAL_DATES - 1
        self.label_gain = math.exp(-real_data.log_bias_of_mean(k))
        self.dates = []  # (intensity, leave-one-out label, stable mask, whole-date offset)
        for site in sites:
            stack = real_data.site_stack(site, real_dir)
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "stack.tif")
                ds = gdal.GetDriverByName("GTiff").Create(src, stack.shape[2], stack.shape[1], stack.shape[0],
                                                          gdal.GDT_Float32)
                ds.SetGeoTransform((0, 10, 0, 0, 0, -10))
                for d in range(stack.shape[0]):
                    ds.GetRasterBand(d + 1).WriteArray(stack[d].astype(np.float32))
                ds = None
                temporal_label([src], os.path.join(tmp, "label.tif"), os.path.join(tmp, "mask.tif"))
                stable = gdal.Open(os.path.join(tmp, "mask.tif")).ReadAsArray() == 1
            for d in range(stack.shape[0]):
                y = stack[d]
                offset = float(np.log(y[y > 0]).mean())  # as despeckle computes it on a whole image
                self.dates.append((y[:rows], real_data.leave_one_out(stack, d)[:rows] * self.label_gain,
                                   stable[:rows], offset))
        self.sites, self.rows = tuple(sites), rows

    @property
    def stable_fraction(self) -> float:
        return float(np.mean([s.mean() for _, _, s, _ in self.dates]))

    def save(self, path: str) -> None:
        """The pairs as computed here, for a machine without GDAL (a lent GPU machine): `load` reads them."""
        y, label, stable, offset = (np.stack([d[i] for d in self.dates]) for i in range(4))
        np.savez_compressed(path, y=y.astype(np.float32), label=label.astype(np.float32), stable=stable,
                            offset=offset, label_gain=self.label_gain, sites=np.array(self.sites), rows=self.rows)

    @classmethod
    def load(cls, path: str, patch: int, rng: np.random.Generator) -> "TemporalPairs":
        with np.load(path) as f:
            pairs = cls.__new__(cls)
            pairs.patch, pairs.rng, pairs.dm = patch, rng, dm
            pairs.label_gain, pairs.rows = float(f["label_gain"]), int(f["rows"])
            pairs.sites = tuple(str(s) for s in f["sites"])
            pairs.dates = [(f["y"][i], f["label"][i], f["stable"][i], float(f["offset"][i]))
                           for i in range(len(f["offset"]))]
        return pairs

    def batch(self, size: int):
        p, rng = self.patch, self.rng
        noisy = np.empty((size, 1, p, p), np.float32)
        clean = np.empty_like(noisy)
        mask = np.empty_like(noisy)
        for i in range(size):
            y, label, stable, offset = self.dates[int(rng.integers(len(self.dates)))]
            cut = patch_cutter(rng, y.shape, p)
            offset = offset + rng.normal(0.0, 0.3)
            noisy[i, 0] = self.dm.normalise(cut(y), offset)
            clean[i, 0] = self.dm.normalise(cut(label), offset)
            mask[i, 0] = cut(stable)
        return noisy, clean, mask


def mixed_batch(sim: SimulatedPatches, real: TemporalPairs | None, size: int, real_fraction: float,
                structure_on: str = "real", real_energy: bool = False):
    """Simulated and real patches in one batch, with per-patch weights of the energy and structure terms.

    The real patches' label is debiased per pixel in the log domain (multiplied by a gain), which
    would bias its local mean intensity: the local energy term leaves them out, or (real_energy)
    compares them with the label divided by that gain, the temporal mean itself, whose local mean
    intensity is unbiased. Returns (noisy, clean, mask, energy weight, structure weight, energy
    shift), the last three per patch. The structure term (--structure) is
    for the real patches only, or for all (structure_on "all": the simulated ones against their true
    reflectivity, so that what the term teaches on real dates does not carry over as too little
    smoothing of simulated speckle).
    """
    n_real = int(round(size * real_fraction)) if real is not None else 0
    parts = [sim.batch(size - n_real)] + ([real.batch(n_real)] if n_real else [])
    noisy, clean, mask = (np.concatenate(a) for a in zip(*parts))
    is_real = np.zeros((size, 1, 1, 1), np.float32)
    is_real[size - n_real :] = 1.0
    energy_weight = np.ones_like(is_real) if real_energy else 1.0 - is_real
    energy_shift = np.zeros_like(is_real)
    if n_real and real_energy:
        energy_shift[size - n_real :] = -math.log(real.label_gain) / dm.LOG_SCALE
    structure_weight = np.ones_like(is_real) if structure_on == "all" else is_real
    return noisy, clean, mask, energy_weight, structure_weight, energy_shift


def cosine_lr(step: int, total: int, lr: float, lr_end: float, warmup: int = 50, time_fraction: float = 0.0) -> float:
    """Short linear warm-up (Adam's moments start empty on resume from a bare checkpoint), then cosine decay,
    by steps or by the share of a time budget spent (time_fraction), whichever is further."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, max(time_fraction, (step - warmup) / max(1, total - warmup)))
    return lr_end + 0.5 * (lr - lr_end) * (1.0 + math.cos(math.pi * t))


def atomic_save(obj, path: str) -> None:
    """Save whole or not at all, under a name of this process's own (one shared `.partial` let two runs
    interleave their writes: a state with one run's step and the other's weights)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = partial_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        remove_quietly(tmp)


def write_candidate(model, record: TrainingRecord, stage: dict, log: dict, folder: str, onnx: bool = True) -> None:
    os.makedirs(folder, exist_ok=True)
    full = TrainingRecord(phases=[*record.phases, stage])
    save_checkpoint(os.path.join(folder, "despecknet.pt"), model, full)
    if onnx:
        export_candidate(model, full, folder)
    with open(os.path.join(folder, "training_log.json"), "w") as f:
        json.dump(log, f, indent=1)


def export_candidate(model, record: TrainingRecord, folder: str) -> None:
    if next(model.parameters()).device.type != "cpu":  # trained on a GPU: export a CPU copy
        import copy

        model = copy.deepcopy(model).to("cpu")
    export_onnx(model, os.path.join(folder, "despecknet.onnx"), record, VERSION, DESCRIPTION)


def batch_workers(args, n: int, real: TemporalPairs | None):
    """Processes that prepare batches while the training loop steps, for a GPU whose steps outrun one core.

    Each worker has its own simulated scenes (seeds args.seed * 1000 + 1 + its number), so the pool
    of scenes grows with the workers, and its own copy of the real pairs (forked: inherited, not read
    again); the sequence of batches is not reproducible, and a resumed run does not continue it.
    Forked before CUDA is initialised in this process.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue(maxsize=4 * n)
    procs = [ctx.Process(target=_batch_worker, args=(queue, args, args.seed * 1000 + 1 + w, real), daemon=True)
             for w in range(n)]
    for p in procs:
        p.start()
    return queue, procs


def _batch_worker(queue, args, seed: int, real: TemporalPairs | None) -> None:
    torch.set_num_threads(1)
    sim = SimulatedPatches(n_scenes=args.scenes, patch=args.patch, seed=seed, realistic=True,
                           regimes=REGIMES[args.regimes], texture_floor_db=args.texture_floor_db)
    if real is not None:
        real.rng = sim.rng  # this process's copy draws from this worker's generator
    while True:
        queue.put(mixed_batch(sim, real, args.batch, args.real_fraction, args.structure_on, args.real_energy))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000, help="total steps of this training stage")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--patch", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-end", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--device", default="auto", help="auto (an NVIDIA GPU when torch can use one), cpu or cuda")
    ap.add_argument("--state", default=DEFAULT_STATE)
    ap.add_argument("--init", default=os.path.join(BUNDLED_DIR, "despecknet.pt"), help="checkpoint to start from")
    ap.add_argument("--scratch", action="store_true", help="start from random weights instead of --init")
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--candidate-every", type=int, default=500)
    ap.add_argument("--fp32", action="store_true", help="disable bf16 autocast")
    ap.add_argument("--regimes", choices=sorted(REGIMES), default="balanced",
                    help="speckle regimes of the training patches (see REGIMES)")
    ap.add_argument("--texture-floor-db", type=float, default=2.0,
                    help="fine grain on field and water parcels (simulate_reflectivity): the real dates of "
                         "../shared/data are more textured than the simulator's default scenes, and the model "
                         "trained on those painted them")
    ap.add_argument("--real-fraction", type=float, default=0.0,
                    help="share of each batch cut from the real dates of ../shared/data (TemporalPairs; rows "
                         "0-127 only, the benchmark scores the rest)")
    ap.add_argument("--structure", type=float, default=0.0,
                    help="weight of the structure term (1 - SSIM in the log domain, core/losses.py) on the real "
                         "patches: the squared error barely tells how much fine texture a date keeps")
    ap.add_argument("--structure-on", choices=["real", "all"], default="real",
                    help="which patches the structure term covers (all: the simulated ones too)")
    ap.add_argument("--real-energy", action="store_true",
                    help="the local energy term on the real patches too, against their temporal mean's own "
                         "local intensity (mixed_batch)")
    ap.add_argument("--real-sites", default=",".join(real_data.REAL_SITES),
                    help="comma-separated sites whose dates --real-fraction uses (leave one out to measure how "
                         "real training carries over to a site it never saw)")
    ap.add_argument("--real-dir", default=real_data.REAL_DIR,
                    help="folder of the --real-sites dates (SITE_1.npy .. SITE_5.npy, co-registered single-look "
                         "amplitudes); make bench-quality --real-dir scores such sites")
    ap.add_argument("--real-rows", type=int, default=real_data.TRAIN_ROWS,
                    help="train on rows 0 to N-1 of the real dates; above the default, make bench-quality's real "
                         "rows of those sites are no longer held out (use sites training never saw to judge)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="stop after this many minutes of steps, state and candidate saved (0: no limit); the "
                         "learning rate then reaches --lr-end when the time is up or at --steps, whichever comes "
                         "first. For a lent GPU machine's few minutes (tools/gpu_session.sh)")
    ap.add_argument("--scenes", type=int, default=128,
                    help="simulated 256x256 scenes that patches are cut from (per data worker); more for long runs")
    ap.add_argument("--data-workers", type=int, default=0,
                    help="processes preparing batches beside the training loop (0: none); for a GPU, whose steps "
                         "outrun one core's batches. The batches' sequence is then not reproducible")
    ap.add_argument("--real-cache", default="",
                    help="the real pairs as --write-real-cache wrote them, read without GDAL (a GPU machine)")
    ap.add_argument("--write-real-cache", default="", metavar="NPZ",
                    help="write the real pairs of --real-sites, --real-dir and --real-rows to NPZ and stop")
    ap.add_argument("--no-onnx", action="store_true",
                    help="candidates without their ONNX export (a machine whose torch this project's exporter does "
                         "not know); export them later with --export")
    ap.add_argument("--export", default="", metavar="FOLDER",
                    help="export FOLDER/despecknet.pt (a candidate) to FOLDER/despecknet.onnx and stop")
    ap.add_argument("--candidate-dir", default=CANDIDATE_DIR,
                    help="where candidates are written and --publish reads them (one per concurrent run)")
    ap.add_argument("--publish", action="store_true", help="copy the candidate in build/model/ to models/ and stop")
    ap.add_argument("--as", dest="publish_as", choices=["general", "multilook"], default="general",
                    help="with --publish: the bundled model it becomes (multilook: the one for 3 looks or more)")
    args = ap.parse_args()
    try:  # one run per state file: a second one crashed the first's saves or mixed their states
        with writing_lock(args.state, "a training run with this state file"):
            run(args)
    except OutputError as exc:
        sys.exit(str(exc))


def run(args) -> None:
    if args.publish:
        from despecknet_qgis.core.model_info import GENERAL_MODEL, MULTILOOK_MODEL

        multilook = args.publish_as == "multilook"
        stem = MULTILOOK_MODEL if multilook else GENERAL_MODEL
        version, description = (MULTILOOK_VERSION, MULTILOOK_DESCRIPTION) if multilook else (VERSION, DESCRIPTION)
        shutil.copyfile(os.path.join(args.candidate_dir, "despecknet.pt"), os.path.join(BUNDLED_DIR, stem + ".pt"))
        shutil.copyfile(os.path.join(args.candidate_dir, "training_log.json"),
                        os.path.join(BUNDLED_DIR, "training_log.json" if not multilook else stem + "_training_log.json"))
        # Exported again, so that the ONNX file carries this script's version and description.
        model, record = load_checkpoint(os.path.join(BUNDLED_DIR, stem + ".pt"))
        export_onnx(model, os.path.join(BUNDLED_DIR, stem + ".onnx"), record, version, description)
        print(f"published {args.candidate_dir} to {BUNDLED_DIR} as {stem}, version {version}")
        return
    if args.export:
        model, record = load_checkpoint(os.path.join(args.export, "despecknet.pt"))
        export_candidate(model, record, args.export)
        print(f"exported {os.path.join(args.export, 'despecknet.onnx')}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    real = None
    if args.real_fraction > 0 or args.write_real_cache:
        if args.real_cache:
            real = TemporalPairs.load(args.real_cache, args.patch, rng)
            args.real_sites, args.real_rows = ",".join(real.sites), real.rows  # what the record says
        else:
            sites = tuple(s for s in args.real_sites.split(",") if s)
            if not sites or not real_data.available(args.real_dir, sites):
                sys.exit(f"--real-fraction needs the dates "
                         f"{', '.join(f'{s}_1..{real_data.REAL_DATES}.npy' for s in sites)} in {args.real_dir} "
                         f"(--real-sites, --real-dir)")
            real = TemporalPairs(args.patch, rng, real_dir=args.real_dir, sites=sites, rows=args.real_rows)
        print(f"real dates: {len(real.dates)}, stable fraction {real.stable_fraction:.3f}", flush=True)
        if args.write_real_cache:
            real.save(args.write_real_cache)
            print(f"wrote {args.write_real_cache}")
            return
    workers = batch_workers(args, args.data_workers, real) if args.data_workers else None
    train = None
    if workers is None:
        train = SimulatedPatches(n_scenes=args.scenes, patch=args.patch, seed=args.seed, realistic=True,
                                 regimes=REGIMES[args.regimes], texture_floor_db=args.texture_floor_db)
        if real is not None:
            real.rng = train.rng  # one generator for both, as the state file saves one
    val_source = SimulatedPatches(n_scenes=16, patch=64, seed=args.seed + 1000, realistic=True)
    val = [tuple(torch.from_numpy(a) for a in val_source.batch(64)) for _ in range(4)]

    if os.path.exists(args.state):
        state = torch.load(args.state, map_location="cpu", weights_only=False)  # our own file
        if state.get("format") != STATE_FORMAT:
            sys.exit(f"{args.state} is not a training state of this script; move it away to start anew.")
        model = DeSpeckNet()
        model.load_state_dict(state["model"])
        record = TrainingRecord(**state["record"])
        step, log = state["step"], state["log"]
        if train is not None and state.get("data_rng") is not None:
            train.rng.bit_generator.state = state["data_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resuming {args.state} at step {step} of {args.steps}", flush=True)
    else:
        if args.scratch:
            model, record = DeSpeckNet(), TrainingRecord()
        else:
            model, record = load_checkpoint(args.init)
        step = 0
        log = {"init": None if args.scratch else os.path.relpath(os.path.abspath(args.init), ROOT), "history": [],
               "runs": []}
        state = None
        print(f"new training stage from {log['init'] or 'random weights'}; state file {args.state}", flush=True)

    weights = replace(PHASE1_BUNDLED, structure=args.structure)
    trainer = Trainer(model, weights, lr=args.lr, use_bf16=False if args.fp32 else None, device=args.device)
    if state is not None:
        trainer.optimizer.load_state_dict(state["optimizer"])
    log["args"] = {k: v for k, v in vars(args).items() if k not in ("publish",)}
    log["runs"].append({"start_step": step, "regimes": args.regimes, "texture_floor_db": args.texture_floor_db,
                        "real_fraction": args.real_fraction, "real_sites": args.real_sites, "real_rows": args.real_rows, "structure": args.structure,
                        "structure_on": args.structure_on, "real_energy": args.real_energy, "bf16": trainer.use_bf16, "torch": torch.__version__,
                        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "device": str(trainer.device), "scenes": args.scenes, "data_workers": args.data_workers,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if step == 0:
        log["validation_start"] = trainer.evaluate(val)
        print(f"validation before this stage: {log['validation_start']}", flush=True)

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def stage_entry(seconds):
        data = "realistic simulated SAR scenes (tools/make_model.py)"
        if real is not None:
            data += (f"; {args.real_fraction:.0%} of each batch: real Sentinel-1 single-look dates ({args.real_sites}) "
                     f"against the mean of their site's other dates, stable pixels, rows 0-{args.real_rows - 1}")
        return {"phase": 1, "data": data,
                "regimes": args.regimes, "texture_floor_db": args.texture_floor_db, "steps": step,
                "batch": args.batch, "patch": args.patch, "lr": [args.lr, args.lr_end, "cosine"], "seed": args.seed,
                "weights": asdict(weights), "bf16": trainer.use_bf16, "seconds": round(seconds)}

    def save_state():
        atomic_save({"format": STATE_FORMAT, "model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                     "step": step, "record": asdict(record), "log": log, "data_rng": None if train is None else train.rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state()}, args.state)

    def next_batch():
        if workers is not None:
            return workers[0].get()
        return mixed_batch(train, real, args.batch, args.real_fraction, args.structure_on, args.real_energy)

    run_started = time.time()
    deadline = run_started + 60 * args.minutes if args.minutes > 0 else math.inf
    previous_seconds = sum(r.get("seconds", 0) for r in log["runs"][:-1])
    running: list[dict] = []
    while step < args.steps and not stop["now"] and time.time() < deadline:
        spent = (time.time() - run_started) / (deadline - run_started) if args.minutes > 0 else 0.0
        trainer.set_lr(cosine_lr(step, args.steps, args.lr, args.lr_end, time_fraction=spent))
        running.append(trainer.step(*(torch.from_numpy(a) for a in next_batch())))
        step += 1
        log["runs"][-1]["seconds"] = round(time.time() - run_started, 1)
        if step % 50 == 0 or step == args.steps:
            v = trainer.evaluate(val)
            entry = {"step": step, "seconds": round(previous_seconds + time.time() - run_started, 1),
                     **{f"train_{k}": float(np.mean([r[k] for r in running])) for k in running[0]},
                     **{f"val_{k}": x for k, x in v.items()}}
            log["history"].append(entry)
            running = []
            print(json.dumps(entry), flush=True)
        if step % args.save_every == 0:
            save_state()
        if step % args.candidate_every == 0:
            write_candidate(model, record, stage_entry(previous_seconds + time.time() - run_started), log,
                            os.path.join(args.candidate_dir, f"step{step}"), onnx=not args.no_onnx)
    if workers is not None:
        for p in workers[1]:
            p.terminate()
    save_state()
    write_candidate(model, record, stage_entry(previous_seconds + time.time() - run_started), log, args.candidate_dir,
                    onnx=not args.no_onnx)
    why = "stopped" if stop["now"] else ("out of time" if step < args.steps else "done")
    print(f"{why} at step {step}; state in {args.state}; candidate in {args.candidate_dir}", flush=True)


if __name__ == "__main__":
    main()
