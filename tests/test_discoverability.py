"""What a QGIS user finds without reading the code (issue 10, items 2 and 4): groups, tags, descriptions,
Help buttons that open an existing README section, icons, a help text (tooltip) on every parameter with its
default and range, enum names on the command line, number boxes that keep small values, short labels,
statistics that keep the polygons' attributes, and the map tool's band."""
import os
import re

import numpy as np
import pytest
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsVectorLayer,
)

from conftest import ROOT, run_qgis_process, write_tif

ALGORITHMS = {"despeckle": "despeckling", "despecklebatch": "despeckling", "classicfilter": "despeckling",
              "temporallabel": "training", "train": "training", "finetune": "training",
              "specklestats": "assessment", "quality": "assessment"}


def github_anchors(markdown: str) -> set:
    """The anchors GitHub gives the headings of a markdown file (lower case, punctuation dropped, spaces to -)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


@pytest.fixture()
def algorithms(provider):
    return {name: provider.algorithm(name) for name in ALGORITHMS}


def test_every_algorithm_is_in_its_group_of_three(algorithms):
    assert all(alg is not None for alg in algorithms.values()), [n for n, a in algorithms.items() if a is None]
    assert {name: alg.groupId() for name, alg in algorithms.items()} == ALGORITHMS
    assert {alg.group() for alg in algorithms.values()} == {"Despeckling", "Training", "Assessment"}
    assert all(alg.id() == f"despecknet:{name}" for name, alg in algorithms.items())  # ids unchanged


def test_help_buttons_open_an_existing_readme_section_of_the_project(algorithms):
    from despecknet_qgis.algorithms.parameter_help import PROJECT_URL

    with open(os.path.join(ROOT, "despecknet_qgis", "metadata.txt"), encoding="utf-8") as fh:
        repository = re.search(r"^repository=(.+)$", fh.read(), flags=re.M).group(1).strip()
    assert PROJECT_URL == repository.rstrip("/")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        anchors = github_anchors(fh.read())
    urls = {}
    for name, alg in algorithms.items():
        url = alg.helpUrl()
        assert url.startswith(f"{PROJECT_URL}/blob/main/README.md#"), url
        anchor = url.split("#", 1)[1]
        assert anchor in anchors, f"{name}: README.md has no heading with the anchor #{anchor}"
        urls[name] = url
    assert len(set(urls.values())) == len(urls)  # a section each


def test_toolbox_search_words_and_short_descriptions(algorithms):
    for name, alg in algorithms.items():
        tags = alg.tags()
        assert "speckle" in tags and "SAR" in tags, (name, tags)
        assert {"radar", "sentinel", "sigma0", "despeckle"} <= set(tags), (name, tags)
        assert len(alg.shortDescription()) > 20, name
    assert {"Lee", "Frost", "Gamma-MAP"} <= set(algorithms["classicfilter"].tags())
    assert "denoise" in algorithms["despeckle"].tags()


def test_each_algorithm_has_its_own_icon_that_loads(algorithms):
    from qgis.PyQt.QtCore import QSize

    paths = set()
    for name, alg in algorithms.items():
        path = alg.svgIconPath()
        assert os.path.isfile(path) and os.path.dirname(path) == os.path.join(ROOT, "despecknet_qgis", "icons"), path
        assert not alg.icon().isNull() and not alg.icon().pixmap(QSize(32, 32)).isNull(), name
        paths.add(path)
    assert len(paths) == len(algorithms)


def test_every_parameter_has_help_stating_default_and_range(algorithms):
    for name, alg in algorithms.items():
        for d in alg.parameterDefinitions():
            text = d.help()
            assert len(text) > 15, f"{name} {d.name()} has no help"
            if isinstance(d, QgsProcessingParameterNumber):
                assert f"Default: {d.defaultValue():g}." in text, (name, d.name(), text)
                if d.minimum() > -1e300:
                    assert f"{d.minimum():g}" in text, (name, d.name(), text)
                if d.maximum() < 1e300:
                    assert f"{d.maximum():g}" in text, (name, d.name(), text)
    finetune = algorithms["finetune"].parameterDefinition("LEARNING_RATE").help()
    from despecknet_qgis.core.defaults import PHASE2_TRAINING, RANGES

    assert (f"from {RANGES['lr'].minimum:g} to {RANGES['lr'].maximum:g}" in finetune
            and f"Default: {PHASE2_TRAINING.lr:g}." in finetune)


def test_help_text_ends_with_every_parameter(algorithms):
    for name, alg in algorithms.items():
        text = alg.shortHelpString()
        assert "<b>Parameters</b>" in text, name
        for d in alg.parameterDefinitions():
            assert f"<b>{d.name()}</b>" in text, (name, d.name())


def test_every_enum_has_names_that_select_its_options(algorithms):
    context = QgsProcessingContext()
    for name, alg in algorithms.items():
        names = alg.enum_names()
        for d in alg.parameterDefinitions():
            if not isinstance(d, QgsProcessingParameterEnum):
                continue
            assert len(names.get(d.name(), [])) == len(d.options()), (name, d.name())
            for index, option in enumerate(names[d.name()]):
                assert alg.parameterAsEnum({d.name(): option}, d.name(), context) == index
                assert f"{index} or {option}" in d.help()


def test_stability_rule_labels_fit_the_dialog_and_names_still_work(algorithms):
    stability = algorithms["temporallabel"].parameterDefinition("STABILITY")
    assert max(len(label) for label in stability.options()) <= 45, stability.options()
    assert "omnibus" in stability.help() and "speckle_test" in stability.help()


def test_small_learning_rates_survive_the_number_box(qgis_app, algorithms):
    from qgis.gui import QgsGui, QgsProcessingGui

    context = QgsProcessingContext()
    for alg_name, param in (("finetune", "LEARNING_RATE"), ("train", "LEARNING_RATE"), ("train", "LEARNING_RATE_END"),
                            ("finetune", "LAMBDA_TV"), ("train", "LAMBDA_TV")):
        definition = algorithms[alg_name].parameterDefinition(param)
        wrapper = QgsGui.processingGuiRegistry().createParameterWidgetWrapper(definition, QgsProcessingGui.Standard)
        widget = wrapper.createWrappedWidget(context)
        wrapper.setWidgetValue(1e-7, context)
        assert wrapper.widgetValue() == pytest.approx(1e-7, rel=1e-6), (alg_name, param)
        # the help is the tooltip the dialog shows
        assert definition.help()[:30] in widget.toolTip()


def polygons_with_attributes():
    layer = QgsVectorLayer("Polygon?crs=EPSG:32631&field=site:string&field=mean:double", "areas", "memory")
    feature = QgsFeature(layer.fields())
    ring = [(600200.0, 5799800.0), (600700.0, 5799800.0), (600700.0, 5799300.0), (600200.0, 5799300.0)]
    feature.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring]]))
    feature.setAttributes(["lake", 42.5])
    layer.dataProvider().addFeatures([feature])
    return layer


def test_specklestats_keeps_the_polygons_attributes(provider, tmp_path):
    import processing

    rng = np.random.default_rng(5)
    raster = write_tif(tmp_path / "r.tif", rng.gamma(1.0, 1.0, (100, 100)), epsg=32631,
                       origin=(600000.0, 5800000.0), pixel=10.0)
    result = processing.run("despecknet:specklestats", {"INPUTS": [raster], "POLYGONS": polygons_with_attributes(),
                                                        "OUTPUT": "memory:", "OUTPUT_HTML": ""},
                            feedback=QgsProcessingFeedback())
    (row,) = list(result["OUTPUT"].getFeatures())
    assert row["site"] == "lake"
    assert row["mean_2"] == 42.5  # the polygon's own 'mean', beside the statistic of that name
    assert 2300 <= row["pixels"] <= 2700 and 0.5 < row["mean"] < 1.5


def test_map_tool_measures_the_chosen_band(qgis_app, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer

    from despecknet_qgis.core.metrics import enl
    from despecknet_qgis.gui.homogeneous_area_tool import stats_for_visible_rasters

    rng = np.random.default_rng(6)
    rough, smooth = rng.gamma(1.0, 1.0, (100, 100)), rng.gamma(30.0, 1 / 30.0, (100, 100))
    two = QgsRasterLayer(write_tif(tmp_path / "two.tif", [rough, smooth], epsg=32631, origin=(0.0, 1000.0),
                                   pixel=10.0), "two")
    one = QgsRasterLayer(write_tif(tmp_path / "one.tif", rough, epsg=32631, origin=(0.0, 1000.0), pixel=10.0), "one")
    square = QgsGeometry.fromPolygonXY([[QgsPointXY(200, 800), QgsPointXY(800, 800), QgsPointXY(800, 200),
                                         QgsPointXY(200, 200)]])
    crs = QgsCoordinateReferenceSystem("EPSG:32631")
    first = dict(stats_for_visible_rasters(square, crs, [two, one], "intensity"))
    second = dict(stats_for_visible_rasters(square, crs, [two, one], "intensity", band=2))
    assert first["two"].enl == pytest.approx(enl(rough[20:80, 20:80]), rel=0.15) and "one" in first
    assert second["two"].enl == pytest.approx(enl(smooth[20:80, 20:80]), rel=0.15)
    assert "one" not in second  # no band 2: left out


@pytest.mark.parametrize("algorithm", ["despeckle", "temporallabel", "classicfilter"])
def test_qgis_process_help_lists_defaults_ranges_and_enum_names(profile, algorithm):
    proc = run_qgis_process("help", f"despecknet:{algorithm}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = {"despeckle": ["0 or intensity, 1 or amplitude, 2 or decibel", "0 or auto, 1 or cpu, 2 or cuda",
                              "Allowed: from 16 to 4096. Default: 512.", "3 or decibel", "1 or Float64"],
                "temporallabel": ["3 or omnibus. Default: omnibus.", "Allowed: from 1e-06 to 0.5. Default: 0.01."],
                "classicfilter": ["1 or lee", "4 or gamma_map", "Default: lee."]}[algorithm]
    for text in expected:
        assert text in proc.stdout, text
