"""Desktop only: a dialog that installs the missing Python packages into the plugin's package folder.

It shows what is missing and why, the exact pip command (to copy into a terminal instead),
and on "Install" runs that command with QProcess, so QGIS stays responsive and pip's
output scrolls in the dialog. Never used by qgis_process: headless, the algorithms say
what is missing and the command in their error message (core/dependencies.py).
"""
from qgis.PyQt.QtCore import QProcess
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QVBoxLayout

from ..core import dependencies as deps


class DependencyInstaller(QDialog):
    """Lists `requirements`, installs them on request with `python -m pip install --target ...`."""

    def __init__(self, requirements, parent=None, python=None, target=None):
        super().__init__(parent)
        self.setWindowTitle("deSpeckNet: missing Python packages")
        self.requirements = list(requirements)
        self.python = python or deps.python_executable()
        self.target = target or deps.packages_dir()
        self.command = deps.install_command(self.requirements, self.python, self.target) if self.python else None
        self.process = None
        self.exit_code = None

        layout = QVBoxLayout(self)
        items = "".join(f"<li><b>{r.pip}</b>: {r.purpose}</li>" for r in self.requirements)
        self.summary = QLabel(
            f"<p>These packages are missing from the Python that QGIS runs:</p><ul>{items}</ul>"
            f"<p>Install them into <code>{self.target}</code> (the plugin adds that folder to Python's path; "
            "no administrator rights needed)?</p>"
        )
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        if self.command:
            self.log.setPlainText("Command:\n" + deps.command_text(self.command))
        else:
            self.log.setPlainText("No Python interpreter of the same version as QGIS's was found next to QGIS: "
                                  "install the packages with the pip of QGIS's Python (OSGeo4W Shell on Windows).")
        layout.addWidget(self.log)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.install_button = self.buttons.addButton("Install", QDialogButtonBox.ButtonRole.AcceptRole)
        self.install_button.setEnabled(self.command is not None)
        self.install_button.clicked.connect(self.install)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.resize(640, 420)

    def install(self):
        """Start pip; the dialog stays open and shows its output."""
        if self.command is None or self.process is not None:
            return
        if not deps.has_pip(self.python):
            self.log.appendPlainText(f"\n{self.python} has no pip. Install pip for it first (Debian/Ubuntu: "
                                     "apt install python3-pip), then try again.")
            return
        self.install_button.setEnabled(False)
        self.log.appendPlainText("\nInstalling...\n")
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._finished)
        self.process.start(self.command[0], self.command[1:])

    def _read_output(self):
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self.log.appendPlainText(text.rstrip("\n"))

    def _finished(self, exit_code, _status=None):
        self.exit_code = exit_code
        deps.activate_packages_dir(self.target)
        lacking = {r.module for r in deps.missing("all")}
        still = [r for r in self.requirements if r.module in lacking]
        if exit_code == 0 and not still:
            self.log.appendPlainText("\nDone. The algorithms can use the packages now; if numpy was replaced, "
                                     "restart QGIS.")
        else:
            self.log.appendPlainText(f"\npip ended with code {exit_code}; still missing: "
                                     f"{', '.join(r.pip for r in still) or 'nothing'}. The command above can be "
                                     "run in a terminal instead.")
            self.install_button.setEnabled(True)
        self.process = None
