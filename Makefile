# deSpeckNet for QGIS. Every target sets itself up first (idempotent, see tools/setup.sh).
PY := .venv/bin/python
QGIS_PROCESS := tools/qgis_process
VERSION := $(shell sed -n 's/^version=//p' metadata.txt)

.PHONY: setup demo test bench model sample package clean

setup:
	@tools/setup.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q tests

bench: setup
	$(PY) tools/bench.py

# Retrain the bundled model from scratch on simulated scenes (CPU, about an hour).
model: setup
	PYTHONPATH=. $(PY) tools/make_model.py

# Regenerate the bundled sample scene (deterministic).
sample: setup
	$(PY) tools/make_sample.py

package: setup
	$(PY) tools/package.py dist/despecknet_qgis-$(VERSION).zip

clean:
	rm -rf build dist demo .pytest_cache .qgis-settings
