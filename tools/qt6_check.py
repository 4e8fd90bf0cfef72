"""Static check for what keeps Python code from running under both Qt5 (QGIS 3) and Qt6 (QGIS 4).

Flags what QGIS's scripts/pyqt5_to_pyqt6 migration script would still rewrite (that
script needs PyQt6 from PyPI; this one runs with the PyQt5 QGIS 3 brings):

- Qt imported other than through qgis.PyQt (`import PyQt5...`, `from PyQt6...`, `import sip`);
- `exec_()` and `print_()` (Qt6 has only `exec()` and `print()`; Qt5 has both);
- classes Qt6 moved from QtWidgets to QtGui (QAction, QShortcut, ...) imported from
  QtWidgets outside the `except ImportError` fallback of an import from QtGui;
- unscoped Qt enum values (`Qt.AlignLeft`, `QDialogButtonBox.Ok`): PyQt6 knows only the
  scoped form (`Qt.AlignmentFlag.AlignLeft`), which PyQt5 5.11+ accepts too. A value is
  recognised by importing the class through qgis.PyQt and looking at what the attribute is:
  an enum member whose enum type is not the attribute itself. QGIS's own enums
  (QgsWkbTypes, Qgis) are not Qt's and are left alone.

Usage: python tools/qt6_check.py [PATH ...] (default: the plugin folder). Prints one line
per finding (path:line:col: message) and exits 1 when there is any.
"""
from __future__ import annotations

import ast
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN_MODULES = ("PyQt5", "PyQt6", "sip", "PySide2", "PySide6")
RENAMED_METHODS = {"exec_": "exec", "print_": "print"}
# Classes Qt6 moved from QtWidgets to QtGui: import them from QtGui, falling back to QtWidgets (Qt5).
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoGroup", "QUndoStack", "QFileSystemModel"}


def _qt_names(tree: ast.AST) -> dict[str, tuple[str, str]]:
    """Local name -> (qgis.PyQt module, class name) for the names a file imports from qgis.PyQt."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qgis.PyQt."):
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
    return names


def _resolve(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def unscoped_enum(owner, attribute: str) -> str | None:
    """The scoped spelling of `owner.attribute` when it is an unscoped Qt enum value, else None."""
    try:
        value = getattr(owner, attribute)
    except AttributeError:
        return None
    if isinstance(value, type) or callable(value):
        return None
    enum_type = type(value)
    if enum_type in (int, float, str, bool, bytes) or enum_type.__module__ == "builtins":
        return None
    enum_name = enum_type.__name__
    if enum_name == attribute or getattr(owner, enum_name, None) is not enum_type:
        return None  # not one of this class's enums (a constant or an object)
    return f"{owner.__name__}.{enum_name}.{attribute}"


def check_source(source: str, path: str = "<source>") -> list[tuple[int, int, str]]:
    """Findings (line, column, message) in one file's source."""
    tree = ast.parse(source, path)
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    findings.append((node.lineno, node.col_offset, f"import {alias.name}: import Qt through qgis.PyQt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                findings.append((node.lineno, node.col_offset, f"from {node.module} import ...: import Qt through qgis.PyQt"))
        elif isinstance(node, ast.Attribute) and node.attr in RENAMED_METHODS:
            findings.append((node.lineno, node.col_offset,
                             f".{node.attr}(): use .{RENAMED_METHODS[node.attr]}() (Qt6 has no {node.attr})"))
    fallbacks = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for h in t.handlers for n in ast.walk(h)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.ImportFrom) and node.module == "qgis.PyQt.QtWidgets" and id(node) not in fallbacks):
            for alias in node.names:
                if alias.name in MOVED_TO_QTGUI:
                    findings.append((node.lineno, node.col_offset,
                                     f"{alias.name} is in QtGui under Qt6: import it from qgis.PyQt.QtGui, and from "
                                     "qgis.PyQt.QtWidgets only in the except ImportError branch (Qt5)"))
    qt_names = _qt_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in qt_names:
            module, name = qt_names[node.value.id]
            owner = _resolve(module, name)
            if owner is None or not isinstance(owner, type):
                continue
            scoped = unscoped_enum(owner, node.attr)
            if scoped and name == "QVariant":
                findings.append((node.lineno, node.col_offset,
                                 f"{node.value.id}.{node.attr}: Qt6 has no QVariant type enum; use "
                                 f"QMetaType.Type.{node.attr} where QGIS >= 3.38, {node.value.id}.{node.attr} before"))
            elif scoped:
                findings.append((node.lineno, node.col_offset,
                                 f"{node.value.id}.{node.attr}: unscoped Qt enum, write {scoped}"))
    return sorted(set(findings))


def python_files(paths: list[str]) -> list[str]:
    files = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
            continue
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".git"))
            files += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".py")]
    return files


def main(argv: list[str]) -> int:
    paths = argv or [os.path.join(ROOT, "despecknet_qgis")]
    count = 0
    for path in python_files(paths):
        with open(path, encoding="utf-8") as fh:
            for line, col, message in check_source(fh.read(), path):
                print(f"{os.path.relpath(path, ROOT)}:{line}:{col + 1}: {message}")
                count += 1
    print(f"qt6_check: {count} finding(s) in {len(python_files(paths))} file(s)", file=sys.stderr)
    return 1 if count else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
