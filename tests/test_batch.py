"""The batch path on a real Dask cluster on loopback: same results as the plugin, safe reruns,
a worker killed mid-run, core options passed through from the core's signature."""
import argparse
import glob
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from conftest import read_tif, speckled_scene, write_tif

distributed = pytest.importorskip("distributed")

from despecknet_qgis.batch import options as bo  # noqa: E402
from despecknet_qgis.batch.plan import MANIFEST, expand_inputs  # noqa: E402
from despecknet_qgis.batch.run import run_batch  # noqa: E402
from despecknet_qgis.core.errors import ClusterError, InputError, OutputError  # noqa: E402
from despecknet_qgis.core.tiled_predict import despeckle_raster  # noqa: E402


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes, one thread each, on loopback."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=50)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def scenes(folder, count=6, size=128):
    """`count` small scenes; the last has two bands (one task per band, then an assembly)."""
    folder.mkdir()
    paths = []
    for i in range(count):
        y, _ = speckled_scene(size, seed=100 + i)
        bands = [y, 3 * y] if i == count - 1 else [y]
        paths.append(write_tif(folder / f"scene{i}.tif", bands, nodata=-1.0))
    return paths


def records(out):
    with open(os.path.join(out, MANIFEST)) as fh:
        return [json.loads(line) for line in fh]


def leftovers(out):
    return glob.glob(os.path.join(out, ".*partial*")) + glob.glob(os.path.join(out, ".despecknet-batch", "parts", "*.tif"))


def test_six_scenes_survive_a_killed_worker_match_sequential_runs_and_rerun_does_nothing(
        client, tiny_model, despeckler, tmp_path):
    # 256² scenes: each task runs long enough that a worker is still busy after the first scene is
    # recorded (at 128² all could finish before the killer saw one running: 5 of 70 runs failed here).
    paths = scenes(tmp_path / "in", size=256)
    out = str(tmp_path / "out")
    pids = client.run(os.getpid)
    killed = {}

    def kill_a_busy_worker():
        # once the first scene is recorded, SIGKILL a worker process that is running a task
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            manifest = os.path.join(out, MANIFEST)
            if os.path.exists(manifest) and os.path.getsize(manifest) > 0:
                for address, keys in client.processing().items():
                    if keys and address in pids:
                        killed.update(address=address, pid=pids[address], keys=list(keys))
                        os.kill(pids[address], signal.SIGKILL)
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    report = run_batch(paths, out, model=tiny_model[0], client=client, ort_threads=1)
    killer.join(5)

    assert killed, "no worker was running a task after the first scene finished: the kill did not happen mid-run"
    assert report.failed == {} and sorted(report.done) == sorted(
        os.path.join(out, f"scene{i}_despeckled.tif") for i in range(6))
    done = records(out)
    assert [r["status"] for r in done] == ["done"] * 6
    assert all(r["model_sha256"] and r["input_fingerprint"]["files"] for r in done)
    lost = {k.split("-")[1] for k in killed["keys"]}  # despeckle-<output stem>-... / assemble-<output stem>-...
    for r in done:
        if os.path.basename(r["output"])[:-4] in lost:  # the killed worker's task ran again on a live worker
            assert not r["worker"].endswith(f":{killed['pid']}")
    assert leftovers(out) == []

    for src in paths:
        stem = os.path.splitext(os.path.basename(src))[0]
        expected = str(tmp_path / f"{stem}_sequential.tif")
        despeckle_raster(src, expected, despeckler)
        got, ds = read_tif(os.path.join(out, f"{stem}_despeckled.tif"))
        want, ref = read_tif(expected)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert np.array_equal(g, w, equal_nan=True)
        assert ds.GetGeoTransform() == ref.GetGeoTransform() and ds.GetProjection() == ref.GetProjection()
        assert [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(ds.RasterCount)] == [-1.0] * len(got)

    mtimes = {p: os.stat(p).st_mtime_ns for p in report.done}
    again = run_batch(paths, out, model=tiny_model[0], client=client)
    assert again.done == [] and again.failed == {} and len(again.skipped) == 6
    assert len(records(out)) == 6
    assert {p: os.stat(p).st_mtime_ns for p in report.done} == mtimes


def test_batch_output_is_bit_identical_to_the_processing_algorithm(provider, client, tiny_model, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeedback

    y, _ = speckled_scene(128, seed=7)
    src = write_tif(tmp_path / "two_bands.tif", [y, 0.5 * y], nodata=-1.0)
    alg = str(tmp_path / "alg.tif")
    processing.run("despecknet:despeckle", {"INPUT": src, "MODEL": tiny_model[0], "OUTPUT": alg},
                   feedback=QgsProcessingFeedback())
    report = run_batch([src], str(tmp_path / "out"), model=tiny_model[0], client=client)
    assert report.failed == {}
    got, ds = read_tif(report.done[0])
    want, ref = read_tif(alg)
    assert len(got) == 2 and all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, want))
    assert ds.GetGeoTransform() == ref.GetGeoTransform() and ds.GetProjection() == ref.GetProjection()


def test_a_large_band_split_across_workers_is_bit_identical_to_the_single_process_run(
        client, tiny_model, despeckler, tmp_path):
    y, _ = speckled_scene(160, seed=11)
    y = y[:, :150]
    z = 2 * y
    y[5:9, 20:40] = z[100:103, 7:60] = -1.0  # nodata
    src = write_tif(tmp_path / "big.tif", [y, z], nodata=-1.0)
    expected, expected_noise = str(tmp_path / "single.tif"), str(tmp_path / "single_noise.tif")
    despeckle_raster(src, expected, despeckler, tile_size=32, noise_path=expected_noise)
    report = run_batch([src], str(tmp_path / "out"), model=tiny_model[0], client=client, noise=True,
                       options={"tile_size": 32}, split_rows=1, split_min_pixels=0)
    assert report.failed == {}
    record = records(str(tmp_path / "out"))[-1]
    assert len(record["window_workers"]) == 2  # the windows of one scene ran on both workers
    for got_path, want_path in ((report.done[0], expected), (os.path.join(tmp_path, "out", "big_speckle.tif"),
                                                              expected_noise)):
        got, ds = read_tif(got_path)
        want, ref = read_tif(want_path)
        assert len(got) == 2 and all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, want))
        assert ds.GetGeoTransform() == ref.GetGeoTransform() and ds.GetProjection() == ref.GetProjection()
        assert ds.GetRasterBand(2).GetNoDataValue() == -1.0
    assert leftovers(str(tmp_path / "out")) == []


def test_a_failed_scene_is_recorded_and_retried_on_the_next_run(client, tiny_model, tmp_path):
    good = write_tif(tmp_path / "good.tif", speckled_scene(96, seed=1)[0])
    bad = tmp_path / "later.tif"
    bad.write_text("not a raster yet")
    out = str(tmp_path / "out")
    first = run_batch([good, str(bad)], out, model=tiny_model[0], client=client)
    assert list(first.failed) == [str(bad)] and "not a raster" in first.failed[str(bad)]
    assert not os.path.exists(os.path.join(out, "later_despeckled.tif"))
    assert sorted(r["status"] for r in records(out)) == ["done", "failed"]

    write_tif(bad, speckled_scene(96, seed=2)[0])
    second = run_batch([good, str(bad)], out, model=tiny_model[0], client=client)
    assert second.skipped == [os.path.join(out, "good_despeckled.tif")]
    assert second.done == [os.path.join(out, "later_despeckled.tif")] and second.failed == {}
    # a changed option makes the finished scene stale
    third = run_batch([good], out, model=tiny_model[0], client=client, options={"point_targets": False})
    assert third.done == [os.path.join(out, "good_despeckled.tif")]
    # so does an output replaced by another file since
    write_tif(os.path.join(out, "later_despeckled.tif"), speckled_scene(96, seed=3)[0])
    fourth = run_batch([str(bad)], out, model=tiny_model[0], client=client)
    assert fourth.done == [os.path.join(out, "later_despeckled.tif")]


def test_outputs_that_would_collide_or_overwrite_an_input_are_refused_before_any_task(tmp_path, tiny_model):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = write_tif(tmp_path / "a" / "x.tif", speckled_scene(64)[0])
    two = write_tif(tmp_path / "b" / "x.tif", speckled_scene(64)[0])
    with pytest.raises(OutputError, match="would both be written"):
        run_batch([one, two], str(tmp_path / "out"), model=tiny_model[0], client=object())
    with pytest.raises(OutputError, match="would overwrite the input"):
        run_batch([one], str(tmp_path / "a"), model=tiny_model[0], suffix="", client=object())
    # names that differ only in case are one file on Windows, macOS and many network shares
    (tmp_path / "c").mkdir()
    upper = write_tif(tmp_path / "c" / "X.tif", speckled_scene(64)[0])
    with pytest.raises(OutputError, match="would both be written"):
        run_batch([one, upper], str(tmp_path / "out"), model=tiny_model[0], client=object())


def test_core_options_become_flags_from_the_core_signature():
    """A core option added later (as another engineer does) needs no batch change."""
    def future_core(input_path, output_path, despeckler, bands: list[int] | None = None, domain: str = "intensity",
                    tile_size: int = 512, zero_as_nodata: bool = False, extent: list[float] | None = None,
                    output_domain: str | None = None, noise_path=None, progress=None):
        return None

    parser = argparse.ArgumentParser()
    names = bo.add_core_flags(parser, future_core)
    assert names == ["domain", "tile_size", "zero_as_nodata", "extent", "output_domain"]
    args = parser.parse_args(["--zero-as-nodata", "--extent", "1,2,3.5,4", "--tile-size", "256", "--output-domain",
                              "decibel"])
    options = bo.options_from_args(args, names, ["domain=amplitude"], func=future_core)
    assert options == {"zero_as_nodata": True, "extent": [1.0, 2.0, 3.5, 4.0], "tile_size": 256,
                       "output_domain": "decibel", "domain": "amplitude"}
    with pytest.raises(InputError, match="`tilesize` is not an option.*tile_size"):
        bo.parse_settings(["tilesize=3"], future_core)
    # the real core: every keyword argument the plugin's algorithm sets is reachable
    real = bo.core_parameters()
    assert {"domain", "tile_size", "overlap", "point_targets"} <= set(real)


def test_inputs_from_folders_and_lists(tmp_path):
    folder = tmp_path / "in"
    paths = scenes(folder, count=2, size=64)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes\n{paths[1]}\n\n")
    assert expand_inputs([str(folder)]) == paths
    assert expand_inputs([f"@{listing}", paths[1]]) == [paths[1]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no raster"):
        expand_inputs([str(tmp_path / "empty")])


# --- despecknet:despecklebatch --------------------------------------------------------------------


def batch_alg(params, feedback=None):
    import processing
    from qgis.core import QgsProcessingFeedback

    return processing.run("despecknet:despecklebatch", params, feedback=feedback or QgsProcessingFeedback())


def test_processing_algorithm_despeckles_a_folder_like_despeckle_and_reruns_nothing(provider, tiny_model, tmp_path):
    paths = scenes(tmp_path / "in", count=3, size=96)
    out = str(tmp_path / "out")
    params = {"INPUT_FOLDER": str(tmp_path / "in"), "MODEL": tiny_model[0], "OUTPUT_FOLDER": out, "WORKERS": 2,
              "OPTIONS": "looks=2.5; bands=1"}
    result = batch_alg(params)
    assert (result["DONE"], result["SKIPPED"], result["FAILED"]) == (3, 0, 0)
    assert result["MANIFEST"] == os.path.join(out, MANIFEST)
    import processing

    single = str(tmp_path / "single.tif")
    processing.run("despecknet:despeckle", {"INPUT": paths[2], "MODEL": tiny_model[0], "OUTPUT": single})
    # the looks option passed through OPTIONS changes the result; compare with the core given the same
    got, _ = read_tif(os.path.join(out, "scene2_despeckled.tif"))
    from despecknet_qgis.core.inference import Despeckler

    despeckle_raster(paths[2], str(tmp_path / "core.tif"), Despeckler(tiny_model[0], "cpu", with_noise=False),
                     bands=[1], looks=2.5)
    want, _ = read_tif(str(tmp_path / "core.tif"))
    assert len(got) == 1 and all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, want))
    again = batch_alg(params)
    assert (again["DONE"], again["SKIPPED"]) == (0, 3)


def test_processing_algorithm_reports_failed_scenes_and_bad_options(provider, tiny_model, tmp_path):
    from qgis.core import QgsProcessingException

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.tif").write_text("no raster")
    with pytest.raises(QgsProcessingException, match="1 of 1 scene.*failed.*run again"):
        batch_alg({"INPUT_FOLDER": str(tmp_path / "in"), "MODEL": tiny_model[0], "OUTPUT_FOLDER": str(tmp_path / "o"),
                   "WORKERS": 1})
    with pytest.raises(QgsProcessingException, match="OPTIONS.*`tilesize` is not an option"):
        batch_alg({"INPUT_FOLDER": str(tmp_path / "in"), "OUTPUT_FOLDER": str(tmp_path / "o"), "OPTIONS": "tilesize=3"})


def test_processing_algorithm_cancel_stops_the_tasks(provider, tiny_model, tmp_path):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    scenes(tmp_path / "in", count=6, size=256)
    out = str(tmp_path / "out")
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda p: feedback.cancel() if p > 0 else None)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        batch_alg({"INPUT_FOLDER": str(tmp_path / "in"), "MODEL": tiny_model[0], "OUTPUT_FOLDER": out, "WORKERS": 1},
                  feedback)
    finished = glob.glob(os.path.join(out, "*_despeckled.tif"))
    assert 1 <= len(finished) < 6
    assert len(records(out)) <= len(finished)  # a task that finished as the cancel went out may be unrecorded
    assert glob.glob(os.path.join(out, ".*partial*")) == []
    # nothing finished is computed again: recorded scenes are skipped, unrecorded ones reuse their output
    result = batch_alg({"INPUT_FOLDER": str(tmp_path / "in"), "MODEL": tiny_model[0], "OUTPUT_FOLDER": out})
    assert result["SKIPPED"] + result["DONE"] == 6 and result["SKIPPED"] == len(records(out)[:-result["DONE"]])
    reran = records(out)[-result["DONE"]:]
    assert sum(r["reused"] for r in reran) == len(finished) - result["SKIPPED"]


def test_without_dask_a_folder_and_a_list_are_despeckled_in_this_process(provider, tiny_model, tmp_path, monkeypatch):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    from despecknet_qgis.core.inference import Despeckler
    from despecknet_qgis.core.tiled_predict import despeckle_raster

    assert provider.algorithm("despecklebatch") is not None
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    paths = scenes(tmp_path / "in", count=2, size=64)
    extra = write_tif(tmp_path / "extra.tif", speckled_scene(64, seed=9)[0])
    listing = tmp_path / "list.txt"
    listing.write_text(f"# one more scene\n{extra}\n")
    out = str(tmp_path / "o")
    logged = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802 - QGIS API
            logged.append(info)
            super().pushInfo(info)

    params = {"INPUT_FOLDER": str(tmp_path / "in"), "INPUT_LIST": str(listing), "MODEL": tiny_model[0],
              "OUTPUT_FOLDER": out, "OUTPUT_DOMAIN": "decibel"}
    result = batch_alg(params, Feedback())
    assert (result["DONE"], result["SKIPPED"], result["FAILED"]) == (3, 0, 0)
    assert any("one after the other in this process" in line and "requirements-batch.txt" in line for line in logged)
    # one output per input, named after it, each the same as despecknet:despeckle's, listed in the summary
    despeckler = Despeckler(tiny_model[0], "cpu", with_noise=False)
    for src in paths + [extra]:
        name = os.path.join(out, os.path.basename(src)[:-4] + "_despeckled.tif")
        assert any(line.strip() == f"despeckled: {name}" for line in logged)
        despeckle_raster(src, str(tmp_path / "ref.tif"), despeckler, output_domain="decibel")
        np.testing.assert_array_equal(read_tif(name)[0][0], read_tif(tmp_path / "ref.tif")[0][0])
    assert batch_alg(params)["SKIPPED"] == 3
    # a scheduler needs dask: the message names the packages and how to install them
    with pytest.raises(QgsProcessingException, match="dask and distributed.*pip install"):
        batch_alg({**params, "SCHEDULER": "tcp://127.0.0.1:8786"})


def test_a_bad_scene_fails_alone_in_this_process(provider, tiny_model, tmp_path, monkeypatch):
    from qgis.core import QgsProcessingException

    monkeypatch.setitem(sys.modules, "distributed", None)
    paths = scenes(tmp_path / "in", count=2, size=64)
    bad = tmp_path / "in" / "broken.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(QgsProcessingException, match=r"1 of 3 scene\(s\) failed.*broken.tif"):
        batch_alg({"INPUT_FOLDER": str(tmp_path / "in"), "MODEL": tiny_model[0], "OUTPUT_FOLDER": str(tmp_path / "o")})
    for src in paths:
        assert os.path.isfile(os.path.join(tmp_path, "o", os.path.basename(src)[:-4] + "_despeckled.tif"))


def test_a_scheduler_that_does_not_answer_is_named(tiny_model, tmp_path, monkeypatch):
    import socket

    from despecknet_qgis.batch import run

    monkeypatch.setattr(run, "SCHEDULER_TIMEOUT", "2s")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = write_tif(tmp_path / "x.tif", speckled_scene(64)[0])
    with pytest.raises(ClusterError, match=f"No Dask scheduler answers at `scheduler` tcp://127.0.0.1:{port}"):
        run_batch([src], str(tmp_path / "out"), model=tiny_model[0], scheduler=f"tcp://127.0.0.1:{port}")


def test_own_local_cluster_reports_a_dashboard_that_answers(tiny_model, tmp_path):
    import urllib.request

    pytest.importorskip("bokeh")
    src = write_tif(tmp_path / "x.tif", speckled_scene(64)[0])
    pages = []

    def log(line):
        if line.startswith("Dask:"):  # the cluster runs now: open the dashboard link it printed
            link = line.split("dashboard ")[1].split()[0]
            with urllib.request.urlopen(link, timeout=30) as page:
                pages.append((link, page.status))

    report = run_batch([src], str(tmp_path / "out"), model=tiny_model[0], workers=1, processes=False, log=log)
    assert report.done and pages == [(report.dashboard, 200)] and report.dashboard.startswith("http://127.0.0.1:")


def test_command_line_runs_reruns_and_refuses_unknown_options(tiny_model, tmp_path):
    import subprocess

    paths = scenes(tmp_path / "in", count=2, size=64)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    cmd = [sys.executable, "-m", "despecknet_qgis.batch", f"@{listing}", "--output-dir", str(tmp_path / "out"),
           "--model", tiny_model[0], "--workers", "1", "--no-point-targets"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "2 despeckled, 0 up to date, 0 failed" in first.stdout
    assert "dashboard http://127.0.0.1:" in first.stderr and "2/2 scenes" in first.stderr
    assert all(r["options"] == {"point_targets": False} for r in records(str(tmp_path / "out")))
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "0 despeckled, 2 up to date" in again.stdout
    bad = subprocess.run(cmd + ["--set", "tilesize=3"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "`tilesize` is not an option" in bad.stderr


def test_the_plugin_imports_no_dask_and_loads_where_it_is_missing():
    import subprocess

    code = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
            "from despecknet_qgis.provider import DespeckNetProvider\n"
            "from despecknet_qgis.algorithms.despeckle_batch import DespeckleBatchAlgorithm\n"
            "DespeckleBatchAlgorithm().initAlgorithm()\n"
            "print('loaded', [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'bokeh')])")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "loaded ['dask', 'distributed']" in proc.stdout  # only the two blocked entries: nothing imported


def test_a_forced_precision_is_recorded_and_redoes_scenes_made_otherwise(client, tiny_model, tmp_path):
    y, _ = speckled_scene(96, seed=17)
    src = write_tif(tmp_path / "y.tif", y)
    out = str(tmp_path / "out")
    first = run_batch([src], out, model=tiny_model[0], client=client)
    assert len(first.done) == 1
    forced = run_batch([src], out, model=tiny_model[0], client=client, precision="fp32")
    assert len(forced.done) == 1 and forced.skipped == []  # "auto" may have been bf16: not the same result
    assert read_tif(forced.done[0])[1].GetMetadataItem("DESPECKNET_PRECISION") == "fp32"
    assert run_batch([src], out, model=tiny_model[0], client=client, precision="fp32").skipped == forced.done
    with pytest.raises(InputError, match="Unknown `precision`"):
        run_batch([src], str(tmp_path / "other"), model=tiny_model[0], client=client, precision="fp8")


def test_a_worker_refuses_a_model_file_that_changed_since_the_batch_started(tmp_path):
    """Workers check the model against the client's digest, also after the file is rewritten in place
    (the digest cache is keyed by size and mtime, so a stale digest is never reused)."""
    from conftest import export_tiny_model

    from despecknet_qgis.batch import tasks
    from despecknet_qgis.core.errors import ModelError
    from despecknet_qgis.core.files import model_sha256

    model = str(export_tiny_model(tmp_path / "m.onnx", seed=1)[0])
    digest = model_sha256(model)
    first = tasks.load_despeckler(model, digest, "cpu", 1, False, "fp32")
    assert tasks.load_despeckler(model, digest, "cpu", 1, False, "fp32") is first  # loaded once per worker
    with pytest.raises(ModelError, match="not the one the batch was started with"):
        tasks.load_despeckler(model, "0" * 64, "cpu", 1, False, "fp32")
    st = os.stat(model)
    export_tiny_model(tmp_path / "m.onnx", seed=2)  # another model under the same name
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ModelError, match="not the one the batch was started with"):
        tasks.load_despeckler(model, digest, "cpu", 2, False, "fp32")
    # Rewritten with its size and modification time kept (cp -p, a coarse clock): a digest cached for that
    # state passed the other model.
    export_tiny_model(tmp_path / "m.onnx", seed=1)
    good = os.stat(model)
    tasks.load_despeckler(model, digest, "cpu", 3, False, "fp32")
    export_tiny_model(tmp_path / "m.onnx", seed=3)
    os.utime(model, ns=(good.st_atime_ns, good.st_mtime_ns))
    assert os.path.getsize(model) == good.st_size
    with pytest.raises(ModelError, match="not the one the batch was started with"):
        tasks.load_despeckler(model, digest, "cpu", 4, False, "fp32")
    # The bundled pair is one digest over both ONNX files; a wrong one is refused too.
    assert tasks.load_despeckler(None, model_sha256(None), "cpu", 1, False, "fp32").bundled
    with pytest.raises(ModelError, match="the bundled models"):
        tasks.load_despeckler(None, digest, "cpu", 1, False, "fp32")


def test_an_output_damaged_since_its_run_is_despeckled_again_not_reported_done(tiny_model, tmp_path):
    """The finished task's marker trusted any file at the output's name: a zeroed or truncated output was kept."""
    src = write_tif(tmp_path / "a.tif", speckled_scene(64, seed=12)[0])
    out = str(tmp_path / "out")
    name = os.path.join(out, "a_despeckled.tif")
    run_batch([src], out, model=tiny_model[0], in_process=True)
    good = read_tif(name)[0][0]
    write_tif(name, np.zeros_like(good))  # replaced
    second = run_batch([src], out, model=tiny_model[0], in_process=True)
    assert second.done == [name] and not records(out)[-1].get("reused")
    np.testing.assert_array_equal(read_tif(name)[0][0], good)
    with open(name, "r+b") as fh:  # truncated
        fh.truncate(os.path.getsize(name) // 2)
    third = run_batch([src], out, model=tiny_model[0], in_process=True)
    assert third.done == [name]
    np.testing.assert_array_equal(read_tif(name)[0][0], good)


def test_force_despeckles_again_in_this_process_too(tiny_model, tmp_path):
    """`force` cleared the finished tasks' markers only on Dask: without it, the old result was reported again."""
    src = write_tif(tmp_path / "a.tif", speckled_scene(64, seed=13)[0])
    out = str(tmp_path / "out")
    run_batch([src], out, model=tiny_model[0], in_process=True)
    name = os.path.join(out, "a_despeckled.tif")
    before = os.stat(name).st_mtime_ns
    time.sleep(0.01)
    forced = run_batch([src], out, model=tiny_model[0], in_process=True, force=True)
    assert forced.done == [name] and not records(out)[-1].get("reused")
    assert os.stat(name).st_mtime_ns != before


def test_an_output_folder_that_is_the_input_folder_reruns_without_taking_its_outputs_as_inputs(tiny_model, tmp_path):
    """The second run took a_despeckled.tif as an input and refused to overwrite it (exit 2)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    write_tif(folder / "a.tif", speckled_scene(64, seed=14)[0])
    first = run_batch(expand_inputs([str(folder)]), str(folder), model=tiny_model[0], in_process=True)
    assert first.done == [str(folder / "a_despeckled.tif")]
    second = run_batch(expand_inputs([str(folder)]), str(folder), model=tiny_model[0], in_process=True)
    assert second.skipped == [str(folder / "a_despeckled.tif")] and second.done == [] and second.failed == {}
    assert expand_inputs([str(folder)]) == [str(folder / "a.tif")]


def test_a_split_band_whose_looks_are_unknown_says_its_point_targets_were_not_restored(client, tmp_path):
    """The split path wrote "kept" for a band whose looks were unknown, where the point-target test never ran."""
    from osgeo import gdal

    y, _ = speckled_scene(256, seed=11)
    y[::12, :] = -1.0  # nodata every 12 rows: no fully valid 16x16 block to estimate the looks on
    src = write_tif(tmp_path / "holes.tif", y, nodata=-1.0)
    report = run_batch([src], str(tmp_path / "out"), client=client, split_rows=1, split_min_pixels=1)
    out = gdal.Open(report.done[0])
    assert out.GetMetadataItem("DESPECKNET_POINT_TARGETS") == "kept, except band(s) 1 (looks unknown)"
    assert out.GetRasterBand(1).GetMetadataItem("DESPECKNET_LOOKS") == "unknown"


def test_a_multi_band_scene_georeferenced_by_gcps_keeps_them_and_names_each_bands_model(client, tmp_path):
    """The scene's bands were put together through a VRT that dropped GCPs: a Sentinel-1 GRD's output had no
    georeferencing, and the dataset named band 1's model only, yet was reported done."""
    from osgeo import gdal, osr

    rng = np.random.default_rng(0)
    src = str(tmp_path / "grd.tif")
    ds = gdal.GetDriverByName("GTiff").Create(src, 192, 192, 2, gdal.GDT_Float32)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds.SetGCPs([gdal.GCP(7 + 0.0003 * x, 45 + 0.0002 * y, 0, x, y) for x in (0, 191) for y in (0, 191)], srs)
    for b, (name, looks) in enumerate((("VV", 1), ("VH", 8)), 1):  # 8 looks: the bundled multi-look model
        ds.GetRasterBand(b).WriteArray((0.05 * rng.gamma(looks, 1 / looks, (192, 192))).astype(np.float32))
        ds.GetRasterBand(b).SetDescription(name)
    ds = None
    report = run_batch([src], str(tmp_path / "out"), client=client)
    out = gdal.Open(report.done[0])
    assert out.GetGCPCount() == 4 and out.GetGCPSpatialRef() is not None
    assert [(g.GCPPixel, g.GCPLine, g.GCPX, g.GCPY) for g in out.GetGCPs()] == \
        [(g.GCPPixel, g.GCPLine, g.GCPX, g.GCPY) for g in gdal.Open(src).GetGCPs()]
    models = [out.GetRasterBand(b).GetMetadataItem("DESPECKNET_MODEL") for b in (1, 2)]
    assert models == ["despecknet.onnx", "despecknet_multilook.onnx"]
    assert out.GetMetadataItem("DESPECKNET_MODEL") == "despecknet.onnx, despecknet_multilook.onnx"
    assert out.GetMetadataItem("DESPECKNET_POINT_TARGETS") == "kept"


def test_the_plugins_own_clusters_run_without_dasks_sampling_profiler():
    """The profiler kept running tasks' frames, and with them GDAL datasets, alive in its event loop: files
    were closed (their last blocks written) after being moved into place, and a reader saw zeros."""
    from despecknet_qgis.batch.run import start_client

    client, cluster = start_client(workers=1, threads_per_worker=2, processes=False, dashboard=False)
    try:
        callbacks = client.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
    finally:
        client.close()
        cluster.close()
    assert callbacks and all("profile" not in names and "heartbeat" in names for names in callbacks.values())


@pytest.mark.parametrize("geotransform", [(500000.0, 10.0, 0.0, 4000000.0, 0.0, 10.0),  # south-up
                                          (500000.0, 9.0, 2.0, 4000000.0, 2.0, -9.0)],  # rotated
                         ids=["south_up", "rotated"])
def test_a_multi_band_scene_on_a_south_up_or_rotated_grid_is_put_together(client, tmp_path, geotransform):
    """Its bands were despeckled, then the scene failed with "Received a NULL pointer": the VRT that put the
    bands together refuses such grids."""
    from osgeo import gdal, osr

    rng = np.random.default_rng(1)
    src = str(tmp_path / "scene.tif")
    ds = gdal.GetDriverByName("GTiff").Create(src, 96, 96, 2, gdal.GDT_Float32)
    ds.SetGeoTransform(geotransform)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    ds.SetProjection(srs.ExportToWkt())
    for b in (1, 2):
        ds.GetRasterBand(b).WriteArray((0.05 * rng.gamma(1.0, 1.0, (96, 96))).astype(np.float32))
    ds = None
    report = run_batch([src], str(tmp_path / "out"), client=client)
    assert not report.failed and len(report.done) == 1
    out = gdal.Open(report.done[0])
    assert out.RasterCount == 2 and out.GetGeoTransform() == geotransform
    assert out.GetSpatialRef().IsSame(gdal.Open(src).GetSpatialRef())
