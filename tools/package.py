"""Build the installable plugin zip and check it against the official repository's upload rules.

Usage: package.py OUT.zip. The zip holds one folder, despecknet_qgis/, with the code,
metadata.txt, LICENSE, the icon, the bundled model and the examples (Processing models, and the sample
scene and polygon of data/ under examples/sample/), links resolved.
"""
import configparser
import io
import os
import re
import sys
import zipfile
from urllib.parse import urlparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "despecknet_qgis"
MAX_BYTES = 25_000_000
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker", "repository")
SKIP_DIRS = {"__pycache__", ".git", "__MACOSX", ".pytest_cache"}
SKIP_FILES = re.compile(r"(\.pyc$|^\.|\.partial|\.aux\.xml$)")  # GDAL's .aux.xml: statistics of a local run


def build(out_path: str) -> str:
    src = os.path.join(ROOT, PLUGIN)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder, dirs, files in os.walk(src, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                if SKIP_FILES.search(name):
                    continue
                path = os.path.join(folder, name)
                zf.write(path, os.path.join(PLUGIN, os.path.relpath(path, src)))
    os.replace(tmp, out_path)
    return out_path


def validate(zip_path: str) -> dict:
    """The checks plugins.qgis.org makes on upload (network checks aside); raises ValueError."""
    if os.path.getsize(zip_path) > MAX_BYTES:
        raise ValueError(f"{zip_path} is over {MAX_BYTES} bytes")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        if zf.testzip() is not None:
            raise ValueError("corrupt zip")
        for n in names:
            parts = n.split("/")
            if ".." in n or n.startswith("/") or n.endswith(".pyc") or SKIP_DIRS.intersection(parts):
                raise ValueError(f"forbidden entry {n}")
        tops = {n.split("/")[0] for n in names}
        if tops != {PLUGIN} or not PLUGIN.isidentifier():
            raise ValueError(f"the zip must hold one folder named {PLUGIN}, not {sorted(tops)}")
        for needed in ("__init__.py", "metadata.txt", "LICENSE"):
            if f"{PLUGIN}/{needed}" not in names:
                raise ValueError(f"{needed} is missing")
        parser = configparser.ConfigParser()
        parser.optionxform = str
        parser.read_file(io.StringIO(zf.read(f"{PLUGIN}/metadata.txt").decode("utf8")))
        meta = dict(parser.items("general"))
        missing = [k for k in REQUIRED if not meta.get(k, "").strip()]
        if missing:
            raise ValueError(f"metadata.txt lacks {missing}")
        for key in ("tracker", "repository", "homepage"):
            if key in meta:
                url = urlparse(meta[key])
                if not (url.scheme and url.netloc):
                    raise ValueError(f"metadata {key} is not a URL")
        if "/" in meta["author"]:
            raise ValueError("author cannot contain slashes")
        if f"{PLUGIN}/{meta.get('icon', '')}" not in names:
            raise ValueError("icon missing")
        return meta


if __name__ == "__main__":
    out = build(sys.argv[1])
    meta = validate(out)
    print(f"{out}: {os.path.getsize(out) / 1e6:.1f} MB, {meta['name']} {meta['version']}, passes the repository's rules")
