"""Qt6 readiness: the static check of tools/qt6_check.py, the plugin's own code against it, metadata."""
import configparser
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import qt6_check  # noqa: E402

# Files of the plugin other engineers are migrating (reported to them); every other file must be clean.
PENDING: set = set()

BAD = '''
from PyQt5.QtWidgets import QDialog
import sip
from qgis.PyQt.QtCore import Qt, QVariant
from qgis.PyQt.QtWidgets import QAction, QDialogButtonBox, QMessageBox
box = QDialogButtonBox(QDialogButtonBox.Ok)
align = Qt.AlignLeft | Qt.AlignTop
QMessageBox().exec_()
kind = QVariant.Double
'''

GOOD = '''
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QDialogButtonBox, QMessageBox
try:
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction
box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
align = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop
role = QDialogButtonBox.ButtonRole
QMessageBox().exec()
QMessageBox.information(None, "a", "b")
name = QDialogButtonBox.__name__
'''


def test_the_check_flags_what_pyqt5_to_pyqt6_would_rewrite():
    findings = qt6_check.check_source(BAD)
    messages = "\n".join(f"{line}: {text}" for line, _, text in findings)
    assert "2: from PyQt5.QtWidgets import ...: import Qt through qgis.PyQt" in messages
    assert "3: import sip: import Qt through qgis.PyQt" in messages
    assert "5: QAction is in QtGui under Qt6" in messages
    assert "6: QDialogButtonBox.Ok: unscoped Qt enum, write QDialogButtonBox.StandardButton.Ok" in messages
    assert "7: Qt.AlignLeft: unscoped Qt enum, write Qt.AlignmentFlag.AlignLeft" in messages
    assert "7: Qt.AlignTop: unscoped Qt enum, write Qt.AlignmentFlag.AlignTop" in messages
    assert "8: .exec_(): use .exec()" in messages
    assert "9: QVariant.Double: Qt6 has no QVariant type enum; use QMetaType.Type.Double" in messages
    assert len(findings) == 8, messages


def test_the_check_accepts_the_forms_that_run_on_qt5_and_qt6():
    assert qt6_check.check_source(GOOD) == []
    exec(compile(GOOD.replace("QMessageBox().exec()", "").replace('QMessageBox.information(None, "a", "b")', ""),
                 "<good>", "exec"), {})  # and they run here, on QGIS 3.22's PyQt5


def test_the_plugin_passes_the_check_apart_from_files_being_migrated():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "qt6_check.py"), os.path.join(ROOT, "despecknet_qgis")],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    lines = [line for line in proc.stdout.splitlines() if line]
    assert all(line.split(":")[0] in PENDING for line in lines), "\n".join(lines)
    assert proc.returncode == (1 if lines else 0)


def _metadata(text):
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read_string(text)
    return dict(parser.items("general"))


def test_metadata_declares_qt6_support_and_qgis_4(tmp_path):
    with open(os.path.join(ROOT, "despecknet_qgis", "metadata.txt"), encoding="utf-8") as fh:
        meta = _metadata(fh.read())
    assert meta["supportsQt6"] == "True" and meta["qgisMaximumVersion"] == "4.99"
    assert meta["qgisMinimumVersion"] == "3.22"
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import package

    zip_path = package.build(str(tmp_path / "plugin.zip"))
    with zipfile.ZipFile(zip_path) as zf:
        packed = _metadata(zf.read("despecknet_qgis/metadata.txt").decode("utf-8"))
        assert "despecknet_qgis/gui/dependency_installer.py" in zf.namelist()
    assert packed["supportsQt6"] == "True" and packed["qgisMaximumVersion"] == "4.99"


@pytest.mark.parametrize("module", ["despecknet_qgis.plugin", "despecknet_qgis.gui.homogeneous_area_tool",
                                    "despecknet_qgis.gui.dependency_installer"])
def test_gui_modules_import_on_qgis_3(qgis_app, module):
    import importlib

    importlib.import_module(module)
