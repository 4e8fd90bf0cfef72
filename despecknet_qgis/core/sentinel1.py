"""Sentinel-1 SAFE products (folder, zip or manifest.safe) as inputs: calibrated sigma0 intensity.

GDAL's SENTINEL1 (SAFE) driver lists a GRD product's measurements only as uncalibrated
digital numbers (`SENTINEL1_CALIB:UNCALIB:…:IW_VV:AMPLITUDE`); the `SENTINEL1_CALIB:SIGMA0:…`
names it documents open for SLC products only ("Measurement bands not found" for a GRD, seen
with GDAL 3.6 and in its later sources). Despeckling digital numbers would feed the network
amplitudes scaled by a LUT that varies across the swath, so the calibration is done here, as
ESA specifies it: sigma0 = DN² / A², A the calibration LUT's sigmaNought interpolated
bilinearly between its vectors (by line) and its pixels (by column).

The result is one Float32 GeoTIFF, one band per polarisation (co-polarisation first), each
band described by its polarisation (VV, VH), with the product's GCPs and metadata, and 0
(a border pixel, DN 0) declared nodata. It is written once per product and reused.

Product names GDAL uses are accepted too, `SENTINEL1_CALIB:SIGMA0:<manifest>:IW_VV[:INTENSITY]`,
and give that one polarisation (BETA0 and GAMMA give beta0 and gamma instead of sigma0). The
UNCALIB names, the layers QGIS makes when a product is opened, give sigma0: despeckling wants a
calibrated intensity, not digital numbers.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

try:
    import fcntl
except ImportError:  # Windows: a file that is open cannot be deleted there, which protects readers already
    fcntl = None

import numpy as np

from .errors import InputError
from .files import locked_file, remove_dead_partials, remove_quietly
from .raster import RasterOutput, Window

MANIFEST = "manifest.safe"
CALIB_PREFIX = "SENTINEL1_CALIB:"
_CO_POLARISATIONS = ("VV", "HH")
# calibration in a dataset name -> the calibration vector's LUT (UNCALIB: sigma0, see above)
LUTS = {"SIGMA0": "sigmaNought", "BETA0": "betaNought", "GAMMA": "gamma", "UNCALIB": "sigmaNought"}
_STRIP_LINES = 256
CACHED_PRODUCTS = 4  # calibrated products kept in the cache folder (prune_calibrated)
_XFDU = "{urn:ccsds:schema:xfdu:1}"


# --- recognising a product ---------------------------------------------------------------

def is_sentinel1_input(path) -> bool:
    """True for what this module resolves: a .SAFE folder, a zip holding one, a manifest.safe,
    or a SENTINEL1_CALIB: dataset name."""
    if not isinstance(path, str) or not path:
        return False
    if path.upper().startswith(CALIB_PREFIX):
        return True
    plain = path.rstrip("/\\")
    if os.path.basename(plain).lower() == MANIFEST:
        return True
    if plain.upper().endswith(".SAFE") and (os.path.isdir(plain) or plain.startswith("/vsi")):
        return True
    if plain.lower().endswith(".zip"):
        return _zip_holds_product(plain)
    return measurement_product(plain) is not None


def measurement_product(path: str) -> str | None:
    """The manifest.safe of the product whose measurement file `path` is (X.SAFE/measurement/*.tiff), or None.

    Opening that file is how many open a GRD; its digital numbers are not sigma0, and the LUT varies
    across the swath: it is read as its polarisation of the product, calibrated."""
    folder, name = os.path.split(path)
    if not name.lower().endswith((".tiff", ".tif")) or os.path.basename(folder).lower() != "measurement":
        return None
    manifest = f"{os.path.dirname(folder) or os.curdir}/{MANIFEST}"
    return manifest if _vsi_exists(manifest) else None


def _zip_holds_product(plain: str) -> bool:
    from osgeo import gdal

    root = plain if plain.startswith("/vsizip/") else f"/vsizip/{plain}"
    entries = gdal.ReadDir(root) or []
    return MANIFEST in entries or any(e.upper().endswith(".SAFE") for e in entries)


def manifest_path(path: str) -> str:
    """The GDAL path of the product's manifest.safe (a /vsizip/ path for a zip)."""
    from osgeo import gdal

    plain = path.rstrip("/\\")
    if os.path.basename(plain).lower() == MANIFEST:
        if not _vsi_exists(plain):
            raise InputError(f"{path} does not exist: check the path of the product's {MANIFEST}.")
        return plain
    if plain.lower().endswith(".zip"):
        if not plain.startswith("/vsi") and not os.path.isfile(plain):
            raise InputError(f"The Sentinel-1 product {path} does not exist: check the path.")
        root = plain if plain.startswith("/vsizip/") else f"/vsizip/{plain}"
        entries = gdal.ReadDir(root) or []
        if MANIFEST in entries:
            return f"{root}/{MANIFEST}"
        for entry in entries:
            if entry.upper().endswith(".SAFE") and MANIFEST in (gdal.ReadDir(f"{root}/{entry}") or []):
                return f"{root}/{entry}/{MANIFEST}"
        raise InputError(f"{path} holds no Sentinel-1 product: a SAFE zip has a .SAFE folder with a "
                         f"{MANIFEST} in it. Give the product's zip as downloaded, its unzipped .SAFE "
                         "folder, or that folder's manifest.safe.")
    candidate = f"{plain}/{MANIFEST}"
    if not _vsi_exists(candidate):
        if not _vsi_exists(plain):
            raise InputError(f"The Sentinel-1 product {path} does not exist: check the path.")
        raise InputError(f"{path} has no {MANIFEST}: it is not a complete Sentinel-1 SAFE product. Give the "
                         "unzipped .SAFE folder as downloaded (or its zip).")
    return candidate


def _vsi_exists(path: str) -> bool:
    from osgeo import gdal

    return gdal.VSIStatL(path) is not None


# --- reading the product ----------------------------------------------------------------

class Measurement:
    """One measurement of a product: its polarisation, swath, product type and files."""

    def __init__(self, polarisation, swath, product_type, measurement, calibration, annotation):
        self.polarisation = polarisation
        self.swath = swath
        self.product_type = product_type
        self.measurement = measurement
        self.calibration = calibration
        self.annotation = annotation


def _read_xml(path: str, what: str, product: str) -> ET.Element:
    from osgeo import gdal

    handle = gdal.VSIFOpenL(path, "rb")
    if handle is None:
        raise InputError(f"The Sentinel-1 product {product} lacks its {what} {path}: the product is incomplete "
                         "(an interrupted download or unzip?). Download it again.")
    try:
        data = b""
        while True:
            chunk = gdal.VSIFReadL(1, 1 << 20, handle)
            if not chunk:
                break
            data += chunk
    finally:
        gdal.VSIFCloseL(handle)
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise InputError(f"The {what} {path} of the Sentinel-1 product {product} is not valid XML ({exc}): "
                         "the product is damaged. Download it again.") from exc


def measurements(manifest: str) -> list[Measurement]:
    """The product's measurements as its manifest lists them, co-polarisation first."""
    root = _read_xml(manifest, "manifest", manifest)
    folder = manifest.rsplit("/", 1)[0]
    hrefs = {}
    for data_object in root.iter("dataObject"):
        location = data_object.find("byteStream/fileLocation")
        if location is not None and location.get("href"):
            hrefs[data_object.get("ID")] = (data_object.get("repID", ""), _join(folder, location.get("href")))
    pointers = {m.get("ID"): m.find("dataObjectPointer").get("dataObjectID")
                for m in root.iter("metadataObject") if m.find("dataObjectPointer") is not None}
    found = []
    for unit in root.iter(f"{_XFDU}contentUnit"):
        if unit.get("unitType") != "Measurement Data Unit":
            continue
        pointer = unit.find("dataObjectPointer")
        rep, measurement = hrefs.get(pointer.get("dataObjectID") if pointer is not None else None, ("", None))
        files = {}
        for dmd in (unit.get("dmdID") or "").split():
            kind, href = hrefs.get(pointers.get(dmd), ("", None))
            files[kind] = href
        annotation, calibration = files.get("s1Level1ProductSchema"), files.get("s1Level1CalibrationSchema")
        if annotation is None or calibration is None:
            # a polarisation without its annotation or calibration cannot be calibrated: never dropped silently
            missing = "annotation" if annotation is None else "calibration"
            raise InputError(f"{manifest} lists the measurement {measurement or pointer} without its {missing} file: "
                             "the product is incomplete. Download it again.")
        header = _read_xml(annotation, "annotation", manifest).find("adsHeader")
        text = (lambda tag: (header.findtext(tag) or "").strip()) if header is not None else (lambda tag: "")
        found.append(Measurement(text("polarisation").upper(), text("swath"), text("productType").upper(),
                                 measurement, calibration, annotation))
    found.sort(key=lambda m: (m.swath, m.polarisation not in _CO_POLARISATIONS, m.polarisation))
    return found


def _join(folder: str, href: str) -> str:
    href = href[2:] if href.startswith("./") else href
    return f"{folder}/{href}"


def product_of(path: str) -> tuple[str, str | None, str | None, str]:
    """(the product, swath, polarisation, calibration) that any input is_sentinel1_input accepts names: a
    SENTINEL1_CALIB: name, a measurement file of a product, or the product itself (all its polarisations)."""
    if path.upper().startswith(CALIB_PREFIX):
        source, swath, polarisation, calibration = parse_calib_name(path)
        return source, swath, polarisation, "SIGMA0" if calibration == "UNCALIB" else calibration
    plain = path.rstrip("/\\")
    manifest = measurement_product(plain)
    if manifest is not None:
        return manifest, None, _polarisation_of_measurement(manifest, plain), "SIGMA0"
    return path, None, None, "SIGMA0"


def _polarisation_of_measurement(manifest: str, measurement: str) -> str:
    """The polarisation of the product's measurement file `measurement` (its manifest lists it)."""
    wanted = os.path.normcase(os.path.realpath(measurement)) if not measurement.startswith("/vsi") else measurement
    for m in measurements(manifest):
        if m.measurement and (m.measurement == measurement or (not measurement.startswith("/vsi") and
                              os.path.normcase(os.path.realpath(m.measurement)) == wanted)):
            return m.polarisation
    raise InputError(f"{measurement} lies in the measurement folder of the Sentinel-1 product {manifest}, which does "
                     "not list it: give the product folder or zip itself.")


def grd_measurements(path: str, polarisation: str | None = None, swath: str | None = None
                     ) -> tuple[str, list[Measurement]]:
    """(manifest, the GRD measurements to calibrate): checks the product is one this plugin despeckles."""
    manifest = manifest_path(path)
    found = measurements(manifest)
    if found and swath and not any(m.swath.upper() == swath.upper() for m in found):
        raise InputError(f"{path} has no {swath.upper()} swath; its measurements are of "
                         f"{', '.join(sorted({m.swath for m in found}))}: name one of those.")
    if not found:
        raise InputError(f"The Sentinel-1 product {path} lists no measurement with its annotation and calibration "
                         "files in its manifest.safe: the product is incomplete. Download it again.")
    types = {m.product_type for m in found}
    if types & {"SLC"}:
        swaths = sorted({m.swath for m in found})
        raise InputError(
            f"{path} is a Sentinel-1 SLC product: complex bursts in {len(swaths)} sub-swath(s) ({', '.join(swaths)}) "
            "in slant range, which neither GDAL nor this plugin calibrates and merges into one image. Give a GRD "
            "product, or deburst and calibrate the SLC first (SNAP: TOPSAR-Deburst, Calibration to sigma0) and "
            "despeckle that raster.")
    if types - {"GRD"}:
        raise InputError(f"{path} is a Sentinel-1 {'/'.join(sorted(types))} product; only GRD products (and "
                         "rasters of calibrated intensity) can be despeckled.")
    if polarisation:
        chosen = [m for m in found if m.polarisation == polarisation.upper()]
        if not chosen:
            raise InputError(f"{path} has no {polarisation} measurement; it has "
                             f"{', '.join(m.polarisation for m in found)}.")
        found = chosen
    missing = [m for m in found if m.measurement is None or not _vsi_exists(m.measurement)]
    if missing:
        raise InputError(
            f"The Sentinel-1 product {path} has no measurement file for {', '.join(m.polarisation for m in missing)}"
            f"{' (' + missing[0].measurement + ')' if missing[0].measurement else ''}: the measurement folder is "
            "empty or incomplete (a partial download or unzip?). Download the product again.")
    return manifest, found


def parse_calib_name(name: str) -> tuple[str, str | None, str | None, str]:
    """SENTINEL1_CALIB:SIGMA0:<manifest>:IW_VV[:INTENSITY] -> (manifest, swath, polarisation, calibration)."""
    m = re.match(r"SENTINEL1_CALIB:([A-Z0-9]+):(.+?):([A-Z0-9]+)(?:_([A-Z]{2}))?(?::(AMPLITUDE|COMPLEX|INTENSITY))?$",
                 name, re.I)
    if m is None:
        raise InputError(f"{name} is not a Sentinel-1 dataset name: write SENTINEL1_CALIB:SIGMA0:"
                         "<product>/manifest.safe:IW_VV (or give the product folder or zip).")
    calibration = m.group(1).upper()
    if calibration not in LUTS:
        raise InputError(f"{name} asks for the calibration {calibration}; give SIGMA0, BETA0 or GAMMA: "
                         "SENTINEL1_CALIB:SIGMA0:… (or give the product folder or zip).")
    if m.group(5) and m.group(5).upper() == "COMPLEX":
        raise InputError(f"{name} asks for COMPLEX values; a GRD product holds detected amplitudes: end the "
                         "name with :INTENSITY (or give the product folder or zip).")
    return m.group(2), m.group(3), m.group(4), calibration


def sigma0_names(path: str) -> list[str]:
    """The names of the product's sigma0 measurements, one per polarisation, in GDAL's naming
    (`SENTINEL1_CALIB:SIGMA0:<manifest>:IW_VV:INTENSITY`); `calibrated_raster` opens them."""
    manifest, found = grd_measurements(path)
    return [f"{CALIB_PREFIX}SIGMA0:{manifest}:{m.swath}_{m.polarisation}:INTENSITY" for m in found]


# --- calibration ----------------------------------------------------------------------------

def sigma0_lut(calibration_xml: str, width: int, product: str = "", lut: str = "sigmaNought"
               ) -> tuple[np.ndarray, np.ndarray]:
    """(lines of the vectors, the LUT (sigmaNought) interpolated to every column: one row per vector)."""
    root = _read_xml(calibration_xml, "calibration file", product or calibration_xml)
    lines, rows = [], []
    for vector in root.iter("calibrationVector"):
        try:
            pixels = np.array(vector.findtext("pixel").split(), dtype=np.float64)
            values = np.array(vector.findtext(lut).split(), dtype=np.float64)
            line = float(vector.findtext("line"))
        except (AttributeError, ValueError) as exc:
            raise InputError(f"The calibration file {calibration_xml} has a calibration vector without line, pixel "
                             f"or {lut} values: the product is damaged. Download it again.") from exc
        if len(pixels) != len(values) or len(pixels) < 1 or np.any(values <= 0):
            raise InputError(f"The calibration file {calibration_xml} has a {lut} vector that does not match "
                             "its pixels or is not positive: the product is damaged. Download it again.")
        lines.append(line)
        rows.append(np.interp(np.arange(width, dtype=np.float64), pixels, values))
    if not lines:
        raise InputError(f"The calibration file {calibration_xml} holds no calibration vector: the product is "
                         "damaged. Download it again.")
    order = np.argsort(lines, kind="stable")  # two vectors on one line: lut_rows takes the later one in the file
    return np.asarray(lines)[order], np.asarray(rows)[order]


def lut_rows(lines: np.ndarray, table: np.ndarray, first: int, count: int) -> np.ndarray:
    """The LUT at image lines first..first+count-1: linear between the vectors around each line."""
    wanted = np.arange(first, first + count, dtype=np.float64)
    if len(lines) == 1:
        return np.repeat(table[:1], count, axis=0)
    upper = np.clip(np.searchsorted(lines, wanted, side="right"), 1, len(lines) - 1)
    lower = upper - 1
    gap = lines[upper] - lines[lower]
    # two vectors on one line (seen at burst joins): the later one, not 0/0
    weight = np.where(gap > 0, np.clip((wanted - lines[lower]) / np.where(gap > 0, gap, 1.0), 0.0, 1.0), 1.0)[:, None]
    return (1.0 - weight) * table[lower] + weight * table[upper]


def default_folder() -> str:
    """Where calibrated products go when the caller names no folder (the batch, the core)."""
    # one per user: a folder another user made first (mode 0755) refused every product, and files that
    # someone else wrote would have been trusted as calibrations
    who = str(os.getuid()) if hasattr(os, "getuid") else re.sub(r"\W", "_", os.environ.get("USERNAME", "user"))
    return os.path.join(tempfile.gettempdir(), f"despecknet-sentinel1-{who}")


def resolve_input(path, folder: str | None = None, progress=None, hold: bool = False):
    """`path` itself, or for a Sentinel-1 product (folder, zip, manifest.safe, SENTINEL1_CALIB:
    name) the GeoTIFF of its calibrated sigma0. The one call a reader of inputs needs.
    `progress` (a progress.Progress) is checked for cancellation while a product is calibrated;
    `hold` as in calibrated_raster ((path, None) for anything else)."""
    if not is_sentinel1_input(path):
        return (path, None) if hold else path
    return calibrated_raster(path, folder or default_folder(), progress, hold=hold)


def calibrated_raster(path: str, folder: str, progress=None, hold: bool = False):
    """A GeoTIFF of the product's sigma0 (one band per polarisation, described VV, VH...) under
    `folder`, written once per product and reused while the product is unchanged.

    `progress` (a progress.Progress, None: silent) reports the calibration's percent and is
    checked for cancellation between strips: a full IW GRD takes a minute or more. With `hold`,
    returns (path, the use lock of hold_in_use, which the reader closes when done with the file).

    Raises:
        InputError: the product is incomplete or damaged; Cancelled.
    """
    from osgeo import gdal

    from .progress import SILENT

    progress = progress or SILENT

    source, swath, polarisation, calibration = product_of(path)
    manifest, found = grd_measurements(source, polarisation, swath)
    product = os.path.basename(manifest.rsplit("/", 1)[0])
    stem = re.sub(r"\.(SAFE|zip)$", "", product, flags=re.I) or "sentinel1"
    # two products of one name in different places get different files
    tag = hashlib.sha1(manifest.encode()).hexdigest()[:8]
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, f"{stem}_{tag}_{calibration.lower()}{'_' + polarisation.upper() if polarisation else ''}.tif")
    files = [manifest] + [f for m in found for f in (m.measurement, m.calibration)]
    newest = max((st.mtime for st in map(gdal.VSIStatL, files) if st is not None), default=0)
    # One calibration of a product at a time, across threads and processes (the batch runs a task per
    # band, each asking for the whole product): the others wait and then reuse it.
    with _writing(out):  # pruning leaves a product alone while this lock or its use lock is held
        try:
            st = os.stat(out)
        except OSError:
            st = None
        reused = st is not None and st.st_mtime >= newest  # written before, product unchanged since
        if reused:
            os.utime(out, (time.time(), st.st_mtime))  # used now (relatime may not say so): pruned last
        else:
            progress.info(f"Calibrating {product} to {calibration.lower()} (once; reused while the product is unchanged)")
            _write_sigma0(manifest, found, out, progress, calibration)  # whole or absent (raster.RasterOutput)
        # held before the writing lock goes: a prune in between deleted the product before its reader held it
        in_use = hold_in_use(out) if hold else None
    if not reused:
        prune_calibrated(folder, keep=out)
    return (out, in_use) if hold else out


def _lock_file(out: str, kind: str) -> str:
    folder, name = os.path.split(out)
    return os.path.join(folder, f".{name}.{kind}.lock")  # hidden: prune_calibrated lists no dot file


_THREAD_LOCKS: dict = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class _writing:
    """An exclusive lock on writing one calibrated product: a file lock between processes (POSIX),
    a thread lock within this one (file locks of one process do not exclude its other threads everywhere)."""

    def __init__(self, out: str):
        with _THREAD_LOCKS_GUARD:
            self.thread_lock = _THREAD_LOCKS.setdefault(os.path.abspath(out), threading.Lock())
        self.out, self.path, self.fh = out, _lock_file(out, "writing"), None

    def __enter__(self):
        self.thread_lock.acquire()
        if fcntl is not None:
            try:
                self.fh = locked_file(self.path, fcntl.LOCK_EX)
            except OSError:  # a file system without locks: threads are still serialised
                self.fh = None
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            if not os.path.exists(self.out):  # the calibration failed: leave nothing behind
                try:
                    os.remove(self.path)
                except OSError:
                    pass
            self.fh.close()  # releases the file lock
        self.thread_lock.release()


def hold_in_use(out: str):
    """A shared file lock on a calibrated product while a dataset reads it (close() releases it):
    prune_calibrated leaves a product that another task holds alone. None where there are no file locks."""
    if fcntl is None:
        return None
    try:
        return locked_file(_lock_file(out, "use"), fcntl.LOCK_SH)
    except OSError:
        return None


def _remove_unused(name: str) -> bool:
    """Delete a calibrated product unless a reader holds it (hold_in_use) or a task is checking or
    writing it (_writing: deleted between its check and its use, the task failed with a bare
    FileNotFoundError); True when deleted."""
    held = []
    if fcntl is not None:
        for kind in ("writing", "use"):
            try:
                fh = locked_file(_lock_file(name, kind), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            if fh is None:  # in use by another task: leave it
                for other in held:
                    other.close()
                return False
            held.append(fh)
    try:
        os.remove(name)
        for kind in ("use", "writing"):
            try:
                os.remove(_lock_file(name, kind))
            except OSError:
                pass
        return True
    except OSError:
        return False
    finally:
        for fh in held:
            fh.close()


def _remove_orphan_locks(folder: str) -> None:
    """Lock files of products that are gone (a killed calibration's), unless someone holds them."""
    if fcntl is None:
        return
    for n in os.listdir(folder):
        m = re.fullmatch(r"\.(.+\.tif)\.(use|writing)\.lock", n)
        if m is None or os.path.exists(os.path.join(folder, m.group(1))):
            continue
        path = os.path.join(folder, n)
        try:
            fh = locked_file(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue
        if fh is not None:
            with fh:
                remove_quietly(path)


def prune_calibrated(folder: str, keep: str, products: int = CACHED_PRODUCTS) -> list[str]:
    """Delete all but the `products` most recently used calibrated products in `folder`.

    A full IW GRD is about 1.7 GB a polarisation calibrated: the cache must not fill the
    disk of someone who despeckles a season of products. A product that a task still reads
    (raster.open_raster holds hold_in_use's lock while its dataset lives) is left for later, as is
    one that cannot be deleted now.
    """
    remove_dead_partials(folder)  # a calibration killed midway left up to 1.7 GB a polarisation here
    _remove_orphan_locks(folder)
    used = []
    for n in os.listdir(folder):
        if n.endswith(".tif") and not n.startswith("."):
            try:
                st = os.stat(os.path.join(folder, n))
            except OSError:  # removed meanwhile by another task's pruning
                continue
            used.append((max(st.st_mtime, st.st_atime), os.path.join(folder, n)))
    names = [n for _, n in sorted(used, reverse=True) if os.path.abspath(n) != os.path.abspath(keep)]
    return [n for n in names[max(0, products - 1):] if _remove_unused(n)]


def _write_sigma0(manifest: str, found: list[Measurement], out: str, progress, calibration="SIGMA0") -> None:
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        sources = [gdal.Open(m.measurement) for m in found]
        product = gdal.Open(manifest)  # GCPs and metadata as GDAL's driver reads them
    finally:
        gdal.PopErrorHandler()
    bad = [m.measurement for m, ds in zip(found, sources) if ds is None or ds.RasterCount < 1]
    if bad:
        raise InputError(f"GDAL cannot read the measurement {bad[0]}: the product is damaged. Download it again.")
    width, height = sources[0].RasterXSize, sources[0].RasterYSize
    if any((ds.RasterXSize, ds.RasterYSize) != (width, height) for ds in sources):
        raise InputError(f"The measurements of {manifest} differ in size; only products whose polarisations "
                         "share one grid (GRD) can be despeckled.")
    luts = [sigma0_lut(m.calibration, width, manifest, LUTS[calibration]) for m in found]
    metadata = dict(product.GetMetadata()) if product is not None else {}
    # (no DOMAIN item: an output in decibels copied "intensity" beside its DESPECKNET_OUTPUT_DOMAIN)
    metadata.update({"CALIBRATION": calibration,
                     "SOURCE_PRODUCT": manifest if manifest.startswith("/vsi") else os.path.abspath(manifest)})
    # GDAL's failures (a full disk) recorded, the file read back, and moved into place only when whole
    with RasterOutput(out, sources[0], len(found), [0.0] * len(found),  # DN 0: the product's border, no signal
                      argument="the calibrated product", descriptions=[m.polarisation for m in found],
                      metadata=metadata) as output:
        gcp_source = product if product is not None and product.GetGCPCount() else sources[0]
        if gcp_source.GetGCPCount():
            output.ds.SetGCPs(gcp_source.GetGCPs(), gcp_source.GetGCPSpatialRef())
        for b, (m, src, (lines, table)) in enumerate(zip(found, sources, luts), start=1):
            output.band(b).SetMetadata({"POLARIZATION": m.polarisation, "SWATH": m.swath, "CALIBRATION": calibration})
            dn_band = src.GetRasterBand(1)
            for first in range(0, height, _STRIP_LINES):
                count = min(_STRIP_LINES, height - first)
                dn = dn_band.ReadAsArray(0, first, width, count)
                if dn is None:
                    raise InputError(f"GDAL failed reading lines {first}..{first + count} of {m.measurement}: the "
                                     "product is damaged. Download it again.")
                if np.iscomplexobj(dn):
                    dn = np.abs(dn)
                a = lut_rows(lines, table, first, count)
                sigma0 = (dn.astype(np.float64) / a) ** 2
                output.write(b, Window(0, first, width, count), sigma0.astype(np.float32))
                progress.check()
                progress.set(100.0 * ((b - 1) * height + first + count) / (len(found) * height))
        output.commit()
