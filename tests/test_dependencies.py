"""Missing Python packages: the plugin loads, says exactly what is missing, and despeckles with
onnxruntime and numpy alone.

Each package is made impossible to import in turn (tests/missing_packages/sitecustomize.py on
PYTHONPATH) and the real qgis_process runs the real algorithms on real GeoTIFFs.
"""
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import ROOT, read_tif, run_qgis_process, speckled_scene, write_tif
from despecknet_qgis.core import dependencies as deps
from despecknet_qgis.core.inference import Despeckler, _clean_branch_only
from despecknet_qgis.core.model_info import bundled_model_path

HIDER = os.path.join(ROOT, "tests", "missing_packages")


def run_without(packages, *args, profile):
    """qgis_process with `packages` impossible to import."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "DESPECKNET_HIDE_PACKAGES")}
    os.environ["PYTHONPATH"] = HIDER + (os.pathsep + saved["PYTHONPATH"] if saved["PYTHONPATH"] else "")
    os.environ["DESPECKNET_HIDE_PACKAGES"] = ",".join(packages)
    try:
        return run_qgis_process(*args, profile=profile)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    y, _ = speckled_scene(80, seed=3)
    y[:4, :] = 0.0
    return write_tif(tmp_path_factory.mktemp("scene") / "scene.tif", y, nodata=0.0)


@pytest.mark.parametrize("hidden", [["onnx"], ["scipy"], ["torch"], ["onnx", "scipy", "torch"]])
def test_despeckle_needs_only_onnxruntime_and_numpy(profile, scene, tmp_path, hidden):
    out = tmp_path / "out.tif"
    proc = run_without(hidden, "run", "despecknet:despeckle", "--", f"INPUT={scene}", "INPUT_DOMAIN=0",
                       f"OUTPUT={out}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (x,), ds = read_tif(out)
    assert ds.GetRasterBand(1).GetNoDataValue() == 0.0
    assert (x[:4] == 0.0).all() and np.isfinite(x[4:]).all() and (x[4:] > 0).all()


def test_the_hider_really_hides_the_package(tmp_path):
    env = {**os.environ, "PYTHONPATH": HIDER, "DESPECKNET_HIDE_PACKAGES": "onnx"}
    proc = subprocess.run([sys.executable, "-c", "import onnx"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'onnx'" in proc.stderr


def test_without_onnxruntime_despeckle_names_it_and_the_pip_command_and_writes_nothing(profile, scene, tmp_path):
    out = tmp_path / "out.tif"
    proc = run_without(["onnxruntime"], "run", "despecknet:despeckle", "--", f"INPUT={scene}", f"OUTPUT={out}",
                       profile=profile)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "onnxruntime (for running deSpeckNet models" in text
    assert "-m pip install" in text and "--target" in text
    assert not out.exists() and not os.listdir(tmp_path)
    # the command names the interpreter of QGIS's own Python installation, not qgis_process nor a pyenv shim
    python = text.split("Install them with:\n  ")[1].split(" -m pip")[0]
    probe = subprocess.run([python, "-c", "import os, sys; print(*sys.version_info[:2], os.path.realpath(sys.base_exec_prefix))"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == [*map(str, sys.version_info[:2]), os.path.realpath(sys.base_exec_prefix)]


@pytest.mark.parametrize("hidden", ["torch", "onnx"])
def test_train_checks_its_packages_before_the_first_step(profile, tmp_path, hidden):
    y, scene = speckled_scene(96, seed=5)
    img = write_tif(tmp_path / "img.tif", y)
    lab = write_tif(tmp_path / "lab.tif", scene.reflectivity)
    model = tmp_path / "m.onnx"
    started = time.monotonic()
    proc = run_without([hidden], "run", "despecknet:train", "--", f"INPUT={img}", f"REFERENCE={lab}", "EPOCHS=1",
                       f"OUTPUT_MODEL={model}", profile=profile)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert f"Training (phase 1) needs Python packages missing from the Python QGIS runs: {hidden} " in text
    assert "training patches" not in text  # failed before the patches were even cut
    assert not model.exists() and not model.with_suffix(".pt").exists()
    assert time.monotonic() - started < 120


def test_finetune_checks_its_packages_before_the_first_step(profile, scene, tmp_path):
    model = tmp_path / "tuned.onnx"
    proc = run_without(["onnx"], "run", "despecknet:finetune", "--", f"INPUT={scene}",
                       f"OUTPUT_MODEL={model}", f"OUTPUT={tmp_path / 'despeckled.tif'}", profile=profile)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Fine-tuning (phase 2) needs Python packages missing" in text and "onnx " in text
    assert "training patches" not in text
    assert not model.exists()


def test_provider_lists_every_algorithm_without_scipy(profile, tmp_path):
    proc = run_without(["scipy"], "list", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for alg in ("despeckle", "train", "finetune", "quality", "specklestats", "temporallabel"):
        assert f"despecknet:{alg}" in proc.stdout


def test_missing_lists_exactly_the_hidden_packages():
    code = ("import sys; sys.path.insert(0, %r); from despecknet_qgis.core import dependencies as d; "
            "print(sorted(r.module for r in d.missing('all')), sorted(r.module for r in d.missing('despeckle')), "
            "sorted(r.module for r in d.missing('train', import_them=True)))" % ROOT)
    env = {**os.environ, "PYTHONPATH": HIDER, "DESPECKNET_HIDE_PACKAGES": "onnx,torch"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['onnx', 'torch'] [] ['onnx', 'torch']"


def test_nothing_is_missing_here_and_require_passes():
    assert deps.missing("all", import_them=True) == []
    deps.require("train")


def test_install_command_targets_the_plugin_folder_and_keeps_numpy_below_2(tmp_path):
    reqs = [deps.REQUIREMENTS["onnxruntime"], deps.REQUIREMENTS["torch"]]
    command = deps.install_command(reqs, "/usr/bin/python3", str(tmp_path))
    assert command[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    assert command[command.index("--target") + 1] == str(tmp_path)
    assert "onnxruntime" in command and "torch" in command
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        assert "numpy<2" in command
    if not os.path.exists("/proc/driver/nvidia/version"):
        assert command[command.index("--extra-index-url") + 1] == deps.TORCH_CPU_INDEX
    message = deps.describe(reqs, "Training", "/usr/bin/python3")
    assert "onnxruntime (for running deSpeckNet models" in message and "torch (for training" in message
    assert deps.command_text(deps.install_command(reqs, "/usr/bin/python3")) in message  # into packages_dir()


def test_python_executable_is_a_real_interpreter_even_when_sys_executable_is_qgis(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis_process.bin")  # what sys.executable is inside QGIS
    python = deps.python_executable()
    assert python is not None and "qgis" not in os.path.basename(python)
    out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True)
    assert out.stdout.split() == [str(v) for v in sys.version_info[:2]]


def test_packages_dir_is_per_python_version_and_activated_on_sys_path(tmp_path, monkeypatch):
    monkeypatch.delenv(deps.PACKAGES_ENV, raising=False)
    assert deps.packages_dir().endswith(f"python{sys.version_info[0]}.{sys.version_info[1]}")
    target = tmp_path / "pkgs"
    monkeypatch.setenv(deps.PACKAGES_ENV, str(target))
    assert deps.packages_dir() == str(target)
    assert not deps.activate_packages_dir()
    (target / "despecknet_probe_a").mkdir(parents=True)
    (target / "despecknet_probe_a" / "__init__.py").write_text("VALUE = 7\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert deps.activate_packages_dir() and sys.path[-1] == str(target)
    import despecknet_probe_a

    assert despecknet_probe_a.VALUE == 7


def _probe_wheel(folder):
    """A minimal pure-Python wheel (no network needed to install it)."""
    name = "despecknet_probe_b"
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return str(wheel)


def test_installer_dialog_runs_pip_of_qgis_python_into_the_target(qgis_app, tmp_path, monkeypatch):
    from despecknet_qgis.gui.dependency_installer import DependencyInstaller

    python = deps.python_executable()
    if not deps.has_pip(python):
        pytest.skip(f"{python} has no pip")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setattr(sys, "path", list(sys.path))
    target = tmp_path / "pkgs"
    requirement = deps.Requirement("despecknet_probe_b", _probe_wheel(tmp_path), "a test package")
    dialog = DependencyInstaller([requirement], python=python, target=str(target))
    assert "despecknet_probe_b" in dialog.log.toPlainText() and str(target) in dialog.log.toPlainText()
    dialog.install()
    assert dialog.process is not None
    dialog.process.waitForFinished(120000)
    qgis_app.processEvents()
    assert dialog.exit_code == 0, dialog.log.toPlainText()
    assert str(target) in sys.path
    import despecknet_probe_b

    assert despecknet_probe_b.VALUE == 42
    assert "Done." in dialog.log.toPlainText()


def test_desktop_load_offers_to_install_what_is_missing(qgis_iface, qgis_processing):
    from qgis.PyQt.QtWidgets import QPushButton

    from despecknet_qgis import classFactory

    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert plugin.missing == []  # everything is installed here: no message
        plugin.missing = [deps.REQUIREMENTS["torch"]]  # as on a desktop without it
        plugin.offer_install()
        buttons = plugin.message.findChildren(QPushButton)
        assert any(b.text().startswith("Install") for b in buttons)
        assert "torch" in plugin.message.text()
        installer = plugin.open_installer()
        assert installer.requirements == plugin.missing and "torch" in installer.log.toPlainText()
    finally:
        plugin.unload()


def test_clean_branch_is_cut_without_onnx_and_gives_the_same_clean_output():
    onnx = pytest.importorskip("onnx")
    path = bundled_model_path()
    with open(path, "rb") as fh:
        pruned = onnx.load_model_from_string(_clean_branch_only(fh.read()))
    full = onnx.load_model(path)
    assert [o.name for o in pruned.graph.output] == ["clean"]
    assert 0 < len(pruned.graph.node) < len(full.graph.node)
    onnx.checker.check_model(pruned)
    # the same nodes the onnx package's own walk keeps
    needed, kept = {"clean"}, []
    for node in reversed(full.graph.node):
        if needed.intersection(node.output):
            kept.append(node.name)
            needed.update(i for i in node.input if i)
    assert [n.name for n in pruned.graph.node] == kept[::-1]
    assert {e.key: e.value for e in pruned.metadata_props} == {e.key: e.value for e in full.metadata_props}
    z = np.random.default_rng(1).standard_normal((70, 90)).astype(np.float32)
    clean_only = Despeckler(path, "cpu", with_noise=False).predict(z)[0]
    both = Despeckler(path, "cpu", with_noise=True).predict(z, with_noise=True)[0]
    np.testing.assert_array_equal(clean_only, both)


def test_a_file_that_is_not_onnx_still_gets_onnxruntimes_message(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff not a protobuf")
    assert _clean_branch_only(bad.read_bytes()) == bad.read_bytes()
    from despecknet_qgis.core.errors import ModelError

    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Despeckler(str(bad), "cpu", with_noise=False)


def test_a_numpy_1_that_the_installer_put_in_the_folder_wins_over_an_earlier_numpy_2(tmp_path):
    """Appended to sys.path, the folder's numpy<2 lost to the numpy 2 that broke GDAL: the installer was
    offered again at every start. Only numpy is taken from the folder first; other packages are not."""
    import subprocess

    def fake(folder, name, version):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"__version__ = '{version}'\n")
        (folder / f"{name}-{version}.dist-info").mkdir()

    early, plugin_dir = tmp_path / "user_site", tmp_path / "plugin_packages"
    fake(early, "numpy", "2.0.2")
    fake(early, "jinja2", "3.1.0")
    fake(plugin_dir, "numpy", "1.26.4")
    fake(plugin_dir, "jinja2", "9.9.9")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from despecknet_qgis.core import dependencies as d; d.activate_packages_dir(sys.argv[2]); "
            "import numpy, jinja2; print(numpy.__version__, jinja2.__version__)")
    out = subprocess.run([sys.executable, "-c", code, str(early), str(plugin_dir)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert out.stdout.split() == ["1.26.4", "3.1.0"], out.stderr
    (plugin_dir / "numpy-1.26.4.dist-info").rename(plugin_dir / "numpy-2.1.0.dist-info")  # a numpy 2 there: appended
    out = subprocess.run([sys.executable, "-c", code, str(early), str(plugin_dir)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert out.stdout.split()[0] == "2.0.2", out.stderr
