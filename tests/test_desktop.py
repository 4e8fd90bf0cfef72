"""The plugin in the real QGIS desktop: installed from its zip, each algorithm's dialog opened and run once,
and the plugin's own GUI (toolbar map tool, missing-package installer) used, in `qgis.bin` on Xvfb.

How it works: this test builds the zip (tools/package.py, as `make package`), writes small GeoTIFFs and a
job file, and starts `xvfb-run -a qgis.bin --profiles-path <tmp> --code tests/desktop/qgis_driver.py`.
The driver installs the zip with QGIS's own "Install from ZIP" code, drives the dialogs, saves a
screenshot of each (and each dialog's log) under build/desktop-screenshots/ (git-ignored; look at them
there; copied from the run's own folder at its end, so two runs never mix), writes a JSON
report and quits. The asserts are here, on that report and on the output rasters.

Facts this relies on (QGIS 3.22 from Debian 12, 2 cores):
- `qgis.bin` needs a real X display: on QT_QPA_PLATFORM=offscreen it crashes in QgsClipboard::hasFormat.
  `make test` sets offscreen for everything else, so the desktop's environment sets xcb. Xvfb and
  xauth come from Debian (tools/setup.sh installs them).
- /usr/bin/qgis is a shell wrapper that only adds --noversioncheck; the test calls qgis.bin with it.
- The desktop's embedded Python is Debian's: the venv's packages come through PYTHONPATH (as for
  tools/qgis_process). PYTHONPATH does not read .pth files, so the venv's editable install of this
  repository stays out, and the plugin imported is the unzipped copy (the report says which file).
- The --code script runs before QGIS's event loop: the driver schedules itself with a zero timer and
  waits on tasks with processEvents loops. Processing runs the plugin's algorithms in a background task,
  and models in the main thread behind a modal progress window (expected; any other modal window is a
  failure, closed by the driver so the desktop never hangs).
- Quitting with QgsApplication.exit() crashes 3.22 (signal 11 clearing the project's layers in
  ~QgisApp); Project > Exit after removing the layers quits cleanly (a scratch layer, such as the map
  tool's polygons, would otherwise ask "Are you sure?").
- Python objects of QGIS's own widgets can come as their Qt base class (the advanced-parameter group
  is a QGroupBox to Python): the driver tells them by metaObject().className().
- Start-up of the desktop takes about 7 s; the whole module 60 s on 2 quiet cores, 140 s with the load
  average at 6 (the first torch import and ONNX export inside QGIS: 10 to 20 s).

Skipped only when xvfb-run, Xvfb, xauth or qgis.bin is not installed (`make setup` installs them).
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import ROOT, read_tif, speckled_scene, write_tif

DRIVER = os.path.join(ROOT, "tests", "desktop", "qgis_driver.py")
SHOTS = os.path.join(ROOT, "build", "desktop-screenshots")
QGIS_BIN = "/usr/bin/qgis.bin"
TIMEOUT_S = 240  # the driver stops starting dialogs after DEADLINE_S; this only catches a hung desktop
DEADLINE_S = 170

ALGORITHMS = ("despeckle", "classicfilter", "despecklebatch", "temporallabel", "train", "finetune", "specklestats",
              "quality")
MODELS = ("despeckle_stats", "label_train_despeckle", "finetune_despeckle_folder")


def _missing_display_tools():
    lacking = [tool for tool in ("xvfb-run", "Xvfb", "xauth") if shutil.which(tool) is None]
    if not os.access(QGIS_BIN, os.X_OK):
        lacking.append(QGIS_BIN)
    return lacking


def _polygon(path, box, epsg=32633):
    (x0, y0), (x1, y1) = box
    path.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
        "features": [{"type": "Feature", "properties": {"name": "field", "id": 7}, "geometry": {
            "type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}]}))
    return str(path)


def _data(tmp_path, tiny_model):
    """Small rasters and the parameters of every dialog, in the order they run (quality reads despeckle's output)."""
    from despecknet_qgis.core.simulate import simulate_reflectivity

    d = tmp_path / "data"
    out = tmp_path / "out"
    folder = d / "folder"
    folder.mkdir(parents=True)
    out.mkdir()
    y, _ = speckled_scene(96, seed=60)
    y[24:72, 24:72] = 0.1 * np.random.default_rng(60).exponential(1.0, (48, 48))  # a uniform field in the middle
    scene = write_tif(d / "scene.tif", y.astype(np.float32))
    rng = np.random.default_rng(61)
    x = simulate_reflectivity((96, 96), rng, parcel_size=32.0).reflectivity.astype(np.float32)
    dates = [write_tif(d / f"date{t}.tif", (x * rng.gamma(4.4, 1 / 4.4, x.shape)).astype(np.float32)) for t in range(5)]
    label = write_tif(d / "label.tif", x)
    for name, seed in (("a", 62), ("b", 63)):
        write_tif(folder / f"{name}.tif", speckled_scene(64, looks=4.4, seed=seed)[0].astype(np.float32))
    # the uniform field, in map coordinates (origin 500000, 4000000, 20 m pixels)
    field = _polygon(d / "field.geojson", ((500000.0 + 28 * 20, 4000000.0 - 28 * 20),
                                           (500000.0 + 68 * 20, 4000000.0 - 68 * 20)))
    onnx, checkpoint = tiny_model[0], tiny_model[0].replace(".onnx", ".pt")
    small = {"PATCH_SIZE": 24, "STRIDE": 24, "BATCH_SIZE": 8}
    jobs = [
        # MODEL left empty: the bundled model, from the unzipped plugin
        ("despeckle", "despecknet:despeckle", {"INPUT": scene, "OUTPUT": str(out / "despeckled.tif")}),
        ("classicfilter", "despecknet:classicfilter", {"INPUT": scene, "METHOD": 1, "OUTPUT": str(out / "lee.tif")}),
        ("despecklebatch", "despecknet:despecklebatch", {"INPUT_FOLDER": str(folder), "MODEL": onnx,
                                                         "OUTPUT_FOLDER": str(out / "batch")}),
        ("temporallabel", "despecknet:temporallabel", {"INPUTS": dates, "LOOKS": 4.4, "OUTPUT": str(out / "label.tif"),
                                                       "OUTPUT_MASK": str(out / "mask.tif")}),
        # small numbers the number boxes must keep (issue 10 item 4): LAMBDA_TV, LEARNING_RATE
        ("train", "despecknet:train", {"INPUT": [dates[0]], "REFERENCE": [label], "EPOCHS": 1, **small,
                                       "LAMBDA_TV": 2e-7, "OUTPUT_MODEL": str(out / "trained.onnx")}),
        ("finetune", "despecknet:finetune", {"INPUT": dates[1], "MODEL": checkpoint, "PRESET": 1, **small,
                                             "LEARNING_RATE": 3e-8, "OUTPUT_MODEL": str(out / "tuned.onnx"),
                                             "OUTPUT": str(out / "tuned.tif")}),
        ("specklestats", "despecknet:specklestats", {"INPUTS": [scene, str(out / "despeckled.tif")], "POLYGONS": field,
                                                     "OUTPUT": str(out / "stats.csv"),
                                                     "OUTPUT_HTML": str(out / "stats.html")}),
        ("quality", "despecknet:quality", {"INPUT": str(out / "despeckled.tif"), "NOISY": scene}),
        # the example models, from the toolbox like any algorithm
        ("despeckle_stats", "despecknet:despeckle_stats", {
            "INPUT": scene, "POLYGONS": field, "despeckle:DESPECKLED": str(out / "model_despeckled.tif"),
            "stats:STATISTICS": str(out / "model_stats.csv"), "stats:REPORT": str(out / "model_report.html")}),
        ("label_train_despeckle", "despecknet:label_train_despeckle", {
            "DATES": dates, "TRAINING_IMAGE": dates[0], "INPUT": dates[2], "LOOKS": 4.4, "EPOCHS": 1, **small,
            "label:LABEL": str(out / "model_label.tif"), "train:TRAINED_MODEL": str(out / "model_trained.onnx"),
            "despeckle:DESPECKLED": str(out / "model_from_label.tif")}),
        ("finetune_despeckle_folder", "despecknet:finetune_despeckle_folder", {
            "INPUT": str(folder / "a.tif"), "MODEL": checkpoint, "PRESET": 0, "INPUT_FOLDER": str(folder),
            "PATCH_SIZE": 24, "BATCH_SIZE": 8, "finetune:TUNED_MODEL": str(out / "model_tuned.onnx"),
            "batch:OUTPUT_FOLDER": str(out / "model_batch")}),
    ]
    training = {"train", "finetune", "label_train_despeckle", "finetune_despeckle_folder"}  # torch's ONNX export: ~10 s
    return scene, out, [{"name": n, "alg": a, "params": p, "timeout": 120 if n in training else 60} for n, a, p in jobs]


@pytest.fixture(scope="module")
def desktop(request, tmp_path_factory):
    """Run the desktop once for every check of this module; the report, the output folder and the run's text."""
    lacking = _missing_display_tools()
    if lacking:
        pytest.skip(f"no virtual display for the QGIS desktop: {', '.join(lacking)} not installed "
                    "(`make setup` installs Debian's xvfb and xauth)")
    tiny_model = request.getfixturevalue("tiny_model")  # only once the desktop can run
    from tools.package import build

    tmp_path = tmp_path_factory.mktemp("desktop")
    zip_path = build(str(tmp_path / "despecknet_qgis.zip"))
    scene, out, jobs = _data(tmp_path, tiny_model)
    shots = tmp_path / "shots"  # published to build/desktop-screenshots/ at the end (two runs never mix)
    shots.mkdir()
    profiles = tmp_path / "profiles"
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    # No network at start-up: no plugin repository check, no version check, no news feed.
    ini.write_text("[app]\nplugin_installer\\checkOnStart=false\n\n[qgis]\ncheckVersion=false\n\n"
                   "[core]\nNewsFeed\\httpsfeedqgisorg\\disabled=true\n")
    report_path = tmp_path / "report.json"
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps({"zip": zip_path, "out": str(report_path), "shots": str(shots), "jobs": jobs,
                                    "map_tool_layer": scene, "deadline_s": DEADLINE_S}))
    site_packages = glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages"))
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_PLUGINPATH", "QGIS_CUSTOM_CONFIG_PATH",
                                                              "PYTHONHOME", "DISPLAY", "XAUTHORITY")}
    env.update(QT_QPA_PLATFORM="xcb", DESPECKNET_DESKTOP_JOB=str(job_path),
               XDG_RUNTIME_DIR=str(tmp_path_factory.mktemp("xdg")),
               DESPECKNET_QGIS_PACKAGES=str(tmp_path / "packages"),  # the installer's target: never the user's
               PYTHONPATH=os.pathsep.join(site_packages + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))  # Debian's python first (SIP)
    command = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", QGIS_BIN, "--noversioncheck", "--nologo",
               "--profiles-path", str(profiles), "--code", DRIVER]
    start = time.monotonic()
    for attempt in range(2):
        returncode, stdout, stderr = _run(command, env, str(tmp_path))
        # xvfb-run -a can lose a race for a display number to another X server starting at the same moment
        if report_path.exists() or "Xvfb failed to start" not in stderr:
            break
    wall = time.monotonic() - start
    text = f"exit {returncode} after {wall:.0f} s\nstdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}"
    _publish(shots)
    assert report_path.exists(), f"the desktop wrote no report: {text}"
    report = json.loads(report_path.read_text())
    return {"report": report, "out": out, "text": text, "returncode": returncode, "wall": wall, "stderr": stderr}


def _run(command, env, cwd):
    """(exit code, stdout, stderr); on TIMEOUT_S the whole group goes (xvfb-run, Xvfb, QGIS), none left behind."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n(killed after {TIMEOUT_S} s)"
    return proc.returncode, stdout, stderr


def _publish(shots):
    """Put this run's pictures and dialog logs in build/desktop-screenshots/, replacing the last run's."""
    staging = f"{SHOTS}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(shots, staging)
    shutil.rmtree(SHOTS, ignore_errors=True)
    os.replace(staging, SHOTS)


def _job(desktop, name):
    jobs = {j["name"]: j for j in desktop["report"]["jobs"]}
    assert name in jobs, f"{name} never ran: {desktop['report']['errors']}"
    return jobs[name]


def test_desktop_installs_the_plugin_from_its_zip(desktop):
    install = desktop["report"]["install"]
    assert install["active"] and install["provider"], install
    # the unzipped copy in the profile, not this checkout
    assert install["module_file"].startswith(install["home_plugin_path"] + os.sep), install
    for name in ALGORITHMS + MODELS:
        assert f"despecknet:{name}" in install["algorithms"]
    assert desktop["returncode"] == 0, desktop["text"]


def test_desktop_shows_no_error_and_no_unexpected_window(desktop):
    report = desktop["report"]
    assert not report["errors"], "\n".join(report["errors"])
    assert not report["modal"], report["modal"]
    python_errors = [m["message"] for m in report["log"] if m["tag"] == "Python error"]
    assert not python_errors, python_errors


@pytest.mark.parametrize("name", ALGORITHMS + MODELS)
def test_each_dialog_opens_and_runs(desktop, name):
    job = _job(desktop, name)
    assert job["opened"] and os.path.isfile(job["screenshot"]), job
    assert job["help_button"], f"{name}: no Help button (helpUrl)"
    assert job["ok"], f"{name}: {job.get('error')}\n{job.get('log', '')[-3000:]}"


@pytest.mark.parametrize("name", ALGORITHMS + MODELS)
def test_dialog_labels_fit_the_default_size(desktop, name):
    """Every label and option list, advanced parameters included, fits the panel without sideways scrolling at
    the size QGIS first opens the dialog (688 x 523 here; issue 10 item 4, "labels fit")."""
    job = _job(desktop, name)
    assert job["too_wide"] == [], f"{name} at {job['size']}: " + "; ".join(job["too_wide"])
    assert os.path.isfile(job["screenshot_parameters"])


def test_number_boxes_keep_small_values(desktop):
    """What Run reads back from the dialog's widgets, not what was given to it."""
    assert float(_job(desktop, "train")["from_widgets"]["LAMBDA_TV"]) == 2e-7
    assert float(_job(desktop, "finetune")["from_widgets"]["LEARNING_RATE"]) == 3e-8


def _finite_raster(path, shape):
    (band, *_), _ = read_tif(path)
    assert band.shape == shape and np.isfinite(band).all() and (band > 0).all(), path
    return band


def test_dialog_runs_write_their_outputs(desktop):
    out = desktop["out"]
    results = {j["name"]: j.get("results", {}) for j in desktop["report"]["jobs"]}
    despeckled = _finite_raster(out / "despeckled.tif", (96, 96))
    noisy = read_tif(out.parent / "data" / "scene.tif")[0][0]
    field = (slice(28, 68), slice(28, 68))
    assert despeckled[field].var() < noisy[field].var() / 3  # the bundled model smooths the uniform field
    _finite_raster(out / "lee.tif", (96, 96))
    for name in ("a", "b"):
        _finite_raster(out / "batch" / f"{name}_despeckled.tif", (64, 64))
    assert results["despecklebatch"]["DONE"] == 2
    assert np.isfinite(read_tif(out / "label.tif")[0][0]).mean() > 0.5
    assert (out / "trained.onnx").exists() and os.path.exists(results["train"]["OUTPUT_CHECKPOINT"])
    assert (out / "tuned.onnx").exists()
    _finite_raster(out / "tuned.tif", (96, 96))
    assert results["specklestats"]["ENL"] > 0 and (out / "stats.html").exists()
    assert all(isinstance(results["quality"][k], float) for k in ("MOR", "VOR")), results["quality"]  # no reference
    _finite_raster(out / "model_despeckled.tif", (96, 96))
    _finite_raster(out / "model_from_label.tif", (96, 96))
    for name in ("a", "b"):
        _finite_raster(out / "model_batch" / f"{name}_despeckled.tif", (64, 64))


def test_toolbar_map_tool_measures_enl_on_the_canvas(desktop):
    tool = desktop["report"]["map_tool"]
    assert tool["toolbar"] and tool["layer_valid"], tool
    assert tool["tool_active"] and tool["tool_is_plugins"], tool
    assert any("ENL" in m and "map tool scene" in m for m in tool["messages"]), tool
    assert tool["tool_released"], tool
    assert os.path.isfile(tool["screenshot"])


def test_missing_package_message_opens_the_installer(desktop):
    installer = desktop["report"]["installer"]
    assert installer["message_button"] and installer["opened"], installer
    assert "missing" in installer["title"]
    assert "pip" in " ".join(installer["command"]) and "torch" in installer["command"], installer
    assert os.path.isfile(installer["screenshot"])


def test_toolbar_position_is_kept_between_sessions(desktop):
    """The toolbar has an objectName, or QGIS cannot save where the user put it (Qt warns at exit)."""
    assert "'objectName' not set for QToolBar" not in desktop["stderr"]


def test_runs_leave_no_python_warning_from_the_plugin(desktop):
    """QGIS shows Python warnings to the user (e.g. torch's "exporting a model in training mode")."""
    # QGIS logs a Python warning as "warning:FILE:LINE: Category: text"; torch's own (FutureWarning from
    # copyreg) are not the plugin's.
    sources = [(re.match(r"warning:(.+?):\d+: ", m["message"]), m["message"]) for m in desktop["report"]["log"]
               if m["tag"] == "Python warning"]
    plugin_warnings = [text for match, text in sources if match and "/despecknet_qgis/" in match.group(1)]
    assert not plugin_warnings, plugin_warnings
