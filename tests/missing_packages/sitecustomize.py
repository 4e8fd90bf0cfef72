"""Makes the packages named in DESPECKNET_HIDE_PACKAGES (comma-separated) impossible to import.

Put this folder first on PYTHONPATH: the interpreter (python3 or the one inside qgis_process)
imports `sitecustomize` at start-up, and from then on `import onnx` (or torch, scipy, ...)
raises ModuleNotFoundError as if the package were not installed. Used by
tests/test_dependencies.py to run the plugin with each package missing in turn.
"""
import os
import sys

HIDDEN = {name.strip() for name in os.environ.get("DESPECKNET_HIDE_PACKAGES", "").split(",") if name.strip()}


class _HidePackages:
    def find_spec(self, fullname, path=None, target=None):  # noqa: ARG002 - meta path finder protocol
        if fullname.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return None


if HIDDEN:
    for name in list(sys.modules):
        if name.split(".")[0] in HIDDEN:
            del sys.modules[name]
    sys.meta_path.insert(0, _HidePackages())
