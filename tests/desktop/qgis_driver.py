"""Runs inside the real QGIS desktop (`qgis.bin --code qgis_driver.py`, under Xvfb); started by tests/test_desktop.py.

It does what a user does, in the running application, and writes down what happened:

1. installs the plugin from its zip with QGIS's own "Install from ZIP" code (pyplugin_installer), which
   unzips it into the profile and starts it (classFactory, initGui with the real iface);
2. for each job: opens the algorithm's dialog (processing.createAlgorithmDialog, as the toolbox does),
   fills it, takes a screenshot, presses Run, waits, takes a screenshot of the log, keeps the results;
3. the plugin's own GUI pieces: the toolbar's map tool (clicked on the canvas over a layer) and the
   missing-package message with its installer dialog (opened, never run);
4. writes everything as JSON and quits.

Any modal window that pops up (a warning box, a question) would freeze an unattended desktop: a watcher
records its text, saves a picture of it and closes it; the test then fails on it. Python errors QGIS logs
are recorded too. Nothing here asserts: the test decides from the JSON, so one broken dialog does not hide
the others.

The job file is named by $DESPECKNET_DESKTOP_JOB (JSON): zip, out (result JSON), shots (folder),
jobs [{name, alg, params, timeout}], map_tool_layer (raster path), deadline_s.
"""
import json
import os
import sys
import time
import traceback

from qgis.core import Qgis, QgsApplication, QgsProject, QgsRasterLayer
from qgis.gui import QgsCollapsibleGroupBoxBasic
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEventLoop, QPoint, Qt, QTimer
from qgis.PyQt.QtWidgets import (QApplication, QComboBox, QGroupBox, QLabel, QMessageBox, QPushButton, QScrollArea,
                                 QToolBar)
from qgis.utils import iface

PLUGIN = "despecknet_qgis"

with open(os.environ["DESPECKNET_DESKTOP_JOB"]) as _fh:
    JOB = json.load(_fh)
START = time.monotonic()
REPORT = {"qgis": Qgis.QGIS_VERSION, "python": sys.version.split()[0], "jobs": [], "modal": [], "log": [],
          "errors": []}


def elapsed():
    return round(time.monotonic() - START, 2)


def shot(widget, name):
    """Save a picture of `widget` under the screenshots folder; the file name, or None."""
    try:
        QApplication.processEvents()
        path = os.path.join(JOB["shots"], f"{name}.png")
        if widget.grab().save(path):
            return path
    except Exception:  # noqa: BLE001 - a picture that fails must not stop the checks
        REPORT["errors"].append(f"screenshot {name}: {traceback.format_exc()}")
    return None


def wait_until(predicate, timeout):
    """Let QGIS run (tasks, signals, repaints) until predicate() or the timeout; True if predicate() held."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.02)


# --- what QGIS says on its own -----------------------------------------------------------------------------
def on_message(message, tag, level):
    if tag in ("Python error", "Python warning", "deSpeckNet", "Processing", "Plugins"):
        REPORT["log"].append({"tag": tag, "level": int(level), "message": message[:4000], "t": elapsed()})


QgsApplication.messageLog().messageReceived.connect(on_message)


# Processing's own progress window: modal while a model (not thread-safe) runs in the main thread.
EXPECTED_MODAL = {"QgsProcessingAlgorithmProgressDialog"}


def close_modal_windows():
    """A modal window left open would stop the run: note it, picture it, close it."""
    widget = QApplication.activeModalWidget()
    if widget is None or widget.metaObject().className() in EXPECTED_MODAL:
        return
    text = widget.text() if isinstance(widget, QMessageBox) else ""
    if isinstance(widget, QMessageBox) and widget.informativeText():
        text += "\n" + widget.informativeText()
    index = len(REPORT["modal"])
    REPORT["modal"].append({"class": widget.metaObject().className(), "title": widget.windowTitle(), "text": text,
                            "screenshot": shot(widget, f"modal-{index}"), "t": elapsed()})
    if isinstance(widget, QMessageBox):
        # "No" where asked (e.g. "continue with unmatching CRS?"), else the escape button
        button = widget.button(QMessageBox.StandardButton.No) or widget.escapeButton() or widget.defaultButton()
        if button is not None:
            button.click()
            return
    widget.reject() if hasattr(widget, "reject") else widget.close()


WATCHER = QTimer()
WATCHER.timeout.connect(close_modal_windows)
WATCHER.start(300)


# --- 1. the plugin from its zip ----------------------------------------------------------------------------
def install_plugin():
    import pyplugin_installer
    import qgis.utils

    step = {"zip": JOB["zip"], "zip_exists": os.path.isfile(JOB["zip"])}
    REPORT["install"] = step
    pyplugin_installer.instance().installFromZipFile(JOB["zip"])
    module = sys.modules.get(PLUGIN)
    step["active"] = PLUGIN in qgis.utils.active_plugins
    step["module_file"] = getattr(module, "__file__", None)
    step["home_plugin_path"] = qgis.utils.home_plugin_path
    provider = QgsApplication.processingRegistry().providerById("despecknet")
    step["provider"] = provider is not None
    step["algorithms"] = sorted(a.id() for a in provider.algorithms()) if provider else []
    shot(iface.mainWindow(), "00-main-window-after-install")
    return step["active"] and step["provider"]


# --- 2. each algorithm's dialog ----------------------------------------------------------------------------
def log_text(dialog, name):
    path = os.path.join(JOB["shots"], f"{name}-log.html")
    try:
        dialog.saveLogToFile(path)
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except Exception:  # noqa: BLE001
        return traceback.format_exc()


def plain(value):
    """Results as JSON: numbers and strings as they are, anything else as its text."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def too_wide(dialog):
    """Labels and option lists wider than the parameter panel at the dialog's size (they make it scroll sideways)."""
    found = []
    for area in dialog.mainWidget().findChildren(QScrollArea):
        if not area.isVisible() or area.widget() is None:
            continue
        room = area.viewport().width()
        for label in area.widget().findChildren(QLabel):
            if label.isVisible() and not label.wordWrap() and label.sizeHint().width() > room:
                found.append(f"label {label.text()!r}: {label.sizeHint().width()} px, room {room} px")
        for box in area.widget().findChildren(QComboBox):
            if box.isVisible() and box.sizeHint().width() > room:
                longest = max((box.itemText(i) for i in range(box.count())), key=len, default="")
                found.append(f"options {longest!r}: {box.sizeHint().width()} px, room {room} px")
    return found


def run_dialog(job):
    import processing

    rec = {"name": job["name"], "alg": job["alg"], "opened": False, "ran": False, "ok": False, "t0": elapsed()}
    REPORT["jobs"].append(rec)
    modal_before = len(REPORT["modal"])
    dialog = processing.createAlgorithmDialog(job["alg"], job["params"])
    if dialog is None:
        rec["error"] = "createAlgorithmDialog returned None (algorithm not found)"
        return
    dialog.show()
    rec["opened"] = wait_until(dialog.isVisible, 10)
    rec["title"] = dialog.windowTitle()
    rec["size"] = [dialog.width(), dialog.height()]  # QGIS's default size for a first use
    help_buttons = [b for b in dialog.buttonBox().buttons() if b.text().replace("&", "") == "Help"]
    rec["help_button"] = any(b.isVisible() and b.isEnabled() for b in help_buttons)  # there when helpUrl() is set
    rec["screenshot"] = shot(dialog, f"{job['name']}-dialog")
    # Then every parameter, advanced ones too: open the groups, measure, and picture the whole panel.
    for group in dialog.mainWidget().findChildren(QGroupBox):
        if group.metaObject().className().startswith("QgsCollapsibleGroupBox"):  # Python sees a plain QGroupBox
            sip.cast(group, QgsCollapsibleGroupBoxBasic).setCollapsed(False)
    QApplication.processEvents()
    rec["too_wide"] = too_wide(dialog)
    for area in dialog.mainWidget().findChildren(QScrollArea):
        if area.isVisible() and area.widget() is not None:
            rec["screenshot_parameters"] = shot(area.widget(), f"{job['name']}-parameters")
            break
    try:
        # What the dialog's widgets hold now: what Run will use.
        rec["from_widgets"] = {k: str(v) for k, v in dialog.createProcessingParameters().items()}
    except Exception as exc:  # noqa: BLE001 - processing's InvalidParameterValue and friends
        parameter = getattr(exc, "parameter", None)
        rec["error"] = (f"the dialog refuses its values: {type(exc).__name__}: "
                        f"{parameter.name() if parameter is not None else exc}")
        dialog.close()
        return

    done = {}
    dialog.algorithmFinished.connect(lambda ok, results: done.update(ok=ok, results=results))
    dialog.runButton().click()
    rec["ran"] = True
    finished = wait_until(lambda: done or len(REPORT["modal"]) > modal_before, job.get("timeout", 60))
    rec["seconds"] = round(elapsed() - rec["t0"], 2)
    if not finished:
        rec["error"] = f"no result after {job.get('timeout', 60)} s"
    elif not done:
        popped = REPORT["modal"][modal_before]
        rec["error"] = f"the run stopped at a window: {popped['title']}: {popped['text']}"
    rec["ok"] = bool(done.get("ok"))
    rec["results"] = plain(done.get("results", {}))
    rec["log"] = log_text(dialog, job["name"])[-6000:]
    if dialog.isVisible():
        rec["screenshot_after"] = shot(dialog, f"{job['name']}-after-run")
    dialog.close()
    dialog.deleteLater()


# --- 3. the plugin's own GUI -------------------------------------------------------------------------------
def plugin_toolbar():
    for bar in iface.mainWindow().findChildren(QToolBar):
        if bar.windowTitle() == "deSpeckNet":
            return bar
    return None


def check_map_tool():
    import qgis.utils

    rec = {}
    REPORT["map_tool"] = rec
    plugin = qgis.utils.plugins.get(PLUGIN)
    bar = plugin_toolbar()
    rec["toolbar"] = bar is not None
    if bar is None:
        return
    actions = [a for a in bar.actions() if a.isCheckable()]
    rec["actions"] = [a.text() for a in bar.actions()]
    layer = QgsRasterLayer(JOB["map_tool_layer"], "map tool scene")
    rec["layer_valid"] = layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(layer.extent())
    canvas.refresh()
    wait_until(lambda: False, 1.0)  # let the canvas take its place (the welcome page goes) and draw
    if not actions:
        return
    button = bar.widgetForAction(actions[0])
    button.click()  # the user's way: the toolbar button
    rec["tool_active"] = canvas.mapTool() is not None and type(canvas.mapTool()).__name__ == "HomogeneousAreaTool"
    rec["tool_is_plugins"] = plugin is not None and canvas.mapTool() is getattr(plugin, "tool", None)
    messages = len(REPORT["log"])
    from qgis.PyQt.QtTest import QTest

    viewport = canvas.viewport()
    w, h = viewport.width(), viewport.height()
    rec["canvas_size"] = [w, h]
    centre = QPoint(w // 2, h // 2)
    for dx, dy in ((-40, -40), (40, -40), (40, 40), (-40, 40)):
        QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, centre + QPoint(dx, dy))
        QApplication.processEvents()
    QTest.mouseMove(viewport, centre + QPoint(-30, 40))
    rec["screenshot_drawing"] = shot(iface.mainWindow(), "map-tool-drawing")
    QTest.mouseClick(viewport, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, centre)
    wait_until(lambda: any("ENL" in m["message"] for m in REPORT["log"][messages:]), 15)
    rec["messages"] = [m["message"] for m in REPORT["log"][messages:] if m["tag"] == "deSpeckNet"]
    rec["screenshot"] = shot(iface.mainWindow(), "map-tool-result")
    button.click()  # off again
    rec["tool_released"] = canvas.mapTool() is None or type(canvas.mapTool()).__name__ != "HomogeneousAreaTool"


def check_dependency_installer():
    """The message bar item the plugin shows for missing packages, and the installer it opens (never run)."""
    import qgis.utils

    rec = {}
    REPORT["installer"] = rec
    plugin = qgis.utils.plugins.get(PLUGIN)
    deps = sys.modules[f"{PLUGIN}.core.dependencies"]
    plugin.missing = [deps.REQUIREMENTS["torch"]]  # as if it were missing: what initGui would show
    plugin.offer_install()
    QApplication.processEvents()
    rec["screenshot_message"] = shot(iface.mainWindow(), "dependency-message")
    buttons = [b for b in plugin.message.findChildren(QPushButton) if b.text().startswith("Install")]
    rec["message_button"] = bool(buttons)
    if not buttons:
        return
    buttons[0].click()
    installer = plugin.installer
    rec["opened"] = installer is not None and wait_until(installer.isVisible, 10)
    if not rec["opened"]:
        return
    rec["title"] = installer.windowTitle()
    rec["command"] = list(installer.command or [])
    rec["install_enabled"] = installer.install_button.isEnabled()
    rec["screenshot"] = shot(installer, "dependency-installer")
    installer.close()
    iface.messageBar().clearWidgets()


# --- 4. the run and its end --------------------------------------------------------------------------------
def finish():
    REPORT["seconds"] = elapsed()
    with open(JOB["out"] + ".tmp", "w") as fh:
        json.dump(REPORT, fh, indent=1, default=str)
    os.replace(JOB["out"] + ".tmp", JOB["out"])
    WATCHER.stop()
    # The user's way out (Project > Exit QGIS): the project is closed while the window still exists, then the
    # plugins are unloaded. QgsApplication.exit() alone makes QGIS 3.22 crash clearing the project's layers in
    # ~QgisApp (a layer-style dock update on a deleted widget). The layers go first: the map tool's scratch
    # layer would ask "Are you sure you want to proceed?", and nobody is there to answer.
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().setDirty(False)  # nor "save the project?"
    EXIT_GUARD.start(30_000)
    iface.actionExit().trigger()


def exit_hung():
    """QGIS did not quit within 30 s of Exit: say what held it, end with a code the test reports."""
    widget = QApplication.activeModalWidget()
    sys.stderr.write(f"qgis_driver: QGIS did not quit; modal window: "
                     f"{widget.windowTitle() + ': ' + getattr(widget, 'text', str)() if widget else None}\n")
    sys.stderr.flush()
    os._exit(3)


EXIT_GUARD = QTimer()
EXIT_GUARD.setSingleShot(True)
EXIT_GUARD.timeout.connect(exit_hung)


def main():
    iface.mainWindow().setGeometry(0, 0, 1280, 1024)  # the whole virtual screen (no window manager to maximise)
    try:
        if install_plugin():
            for job in JOB["jobs"]:
                if elapsed() > JOB.get("deadline_s", 150):
                    REPORT["errors"].append(f"out of time before {job['name']}")
                    break
                try:
                    run_dialog(job)
                except Exception:  # noqa: BLE001 - one broken dialog must not hide the others
                    REPORT["errors"].append(f"{job['name']}: {traceback.format_exc()}")
            for check in (check_map_tool, check_dependency_installer):
                try:
                    check()
                except Exception:  # noqa: BLE001
                    REPORT["errors"].append(f"{check.__name__}: {traceback.format_exc()}")
            shot(iface.mainWindow(), "zz-main-window-at-the-end")
    except Exception:  # noqa: BLE001
        REPORT["errors"].append(traceback.format_exc())
    finally:
        finish()


QTimer.singleShot(0, main)
