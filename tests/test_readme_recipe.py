"""The README's PyQGIS recipe runs as written: a standalone script that starts QGIS, registers the provider and
calls processing.run on the sample shipped in the plugin (and on an example model)."""
import os
import re
import subprocess
import sys

from conftest import ROOT

SECTION = "## Example models, sample data and a PyQGIS script"


def readme_recipe() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf8") as fh:
        text = fh.read()
    assert SECTION in text, "the README lost its PyQGIS recipe section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "one ```python block expected in the recipe section"
    return blocks[0]


def test_readme_recipe_registers_the_provider_and_despeckles_the_sample(tmp_path):
    code = readme_recipe()
    assert "addProvider(provider)" in code and "processing.run(" in code and "Processing.initialize()" in code
    script = tmp_path / "recipe.py"
    script.write_text(code)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=ROOT,
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"), XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    enl = {m.group(1): (float(m.group(2)), float(m.group(3)))
           for m in re.finditer(r"^(\S+\.tif): ENL ([\d.]+), Cx ([\d.]+)$", proc.stdout, re.M)}
    assert set(enl) == {"sample_scene.tif", "sample_despeckled.tif"}, proc.stdout
    assert 0.8 < enl["sample_scene.tif"][0] < 1.2  # single-look speckle on the sample's field
    # Despeckled: model 0.5.0 leaves ENL 15.7 on this flat field (0.4.0: 33), as it keeps real texture.
    assert enl["sample_despeckled.tif"][0] > 10 and enl["sample_despeckled.tif"][1] < 0.32
    assert (tmp_path / "sample_despeckled.tif").exists() and (tmp_path / "sample_despeckled_2.tif").exists()
    # the model's table, printed: one row per raster
    table = [line for line in proc.stdout.splitlines() if line.startswith('"0",')]
    assert [line.split(",")[1] for line in table] == ["sample_scene", "sample_despeckled_2"]
