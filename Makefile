# deSpeckNet for QGIS. Every target sets itself up first (idempotent, see tools/setup.sh).
PY := .venv/bin/python
QGIS_PROCESS := tools/qgis_process
VERSION := $(shell sed -n 's/^version=//p' metadata.txt)

.PHONY: setup demo test lint bench bench-batch bench-quality model gpu-kit sample processing-models package clean

setup:
	@tools/setup.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q tests

# What would keep the plugin from running under Qt6 (QGIS 4) as well as Qt5 (QGIS 3): Qt imported other than
# through qgis.PyQt, exec_(), unscoped Qt enums, QAction & co. from QtWidgets (tools/qt6_check.py).
lint: setup
	QT_QPA_PLATFORM=offscreen $(PY) tools/qt6_check.py despecknet_qgis

bench: setup
	$(PY) tools/bench.py

# Batch path on Dask: scenes per minute for 1 and 2 LocalCluster workers beside one process.
# BENCH_BATCH_ARGS="--scenes 16 --size 1024" for more work.
bench-batch: setup
	nice -n 10 $(PY) tools/bench_batch.py $(BENCH_BATCH_ARGS)

# Despeckling quality beside peers (OTB, BM3D, SAR2SAR: tools/setup_peers.sh installs them into
# build/peers-venv, never into .venv) on simulated regimes and the real dates of ../shared/data.
# Report: build/bench-quality/report.md. BENCH_ARGS="--quick" for a short run, "--no-finetune" to skip phase 2,
# "--candidate LABEL=model.onnx" to score another model.
bench-quality: setup
	@tools/setup_peers.sh
	nice -n 15 $(PY) tools/bench_quality.py $(BENCH_ARGS)

# Continue training the bundled model on realistic simulated scenes, resumably: the state is saved
# every 25 steps to ~/.cache/despecknet_qgis/training_state.pt and the next run goes on from it
# (about 2 s a step on 2 cores). Candidates land in build/model/; tools/make_model.py --publish
# copies one to models/ once make bench-quality shows it is better. MODEL_ARGS="--steps N" etc.
model: setup
	PYTHONPATH=. $(PY) tools/make_model.py $(MODEL_ARGS)

# What a session lent a GPU machine carries there (tools/gpu_session.sh): the real training pairs,
# so that training reads them without GDAL. MODEL_ARGS="--real-sites ... --real-dir ..." for others.
gpu-kit: setup
	mkdir -p build/gpu_kit
	PYTHONPATH=. $(PY) tools/make_model.py --write-real-cache build/gpu_kit/real_pairs.npz $(MODEL_ARGS)

# Regenerate the bundled sample scene (deterministic).
sample: setup
	$(PY) tools/make_sample.py

# Regenerate the example Processing models the plugin ships (despecknet_qgis/examples/models, deterministic).
processing-models: setup
	QT_QPA_PLATFORM=offscreen $(PY) tools/make_processing_models.py

package: setup
	$(PY) tools/package.py dist/despecknet_qgis-$(VERSION).zip

clean:
	rm -rf build dist demo .pytest_cache .qgis-settings
