"""despecknet:specklestats - ENL and Cx of rasters inside homogeneous polygons, with an HTML report."""
import math

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QMetaType

from ..core.domain import DOMAINS
from ..core.errors import OutputError
from ..core.files import commit_files, partial_path, remove_quietly, remove_stale_partials
from ..core.raster import band_numbers
from ..core.region_stats import MIN_PIXELS, region_statistics
from ..core.report_html import region_report
from .base import DOMAIN_LABELS, DespeckNetAlgorithm, geometries_in_crs

_INT, _STRING, _DOUBLE = QMetaType.Type.Int, QMetaType.Type.QString, QMetaType.Type.Double
FIELDS = (("polygon", _INT), ("raster", _STRING), ("band", _INT), ("pixels", _INT), ("mean", _DOUBLE), ("std", _DOUBLE),
          ("enl", _DOUBLE), ("cx", _DOUBLE), ("gamma_looks", _DOUBLE))


def typed_field(name: str, field_type) -> QgsField:
    """A field of a QMetaType.Type, on every QGIS: from 3.38 (and under Qt6) QgsField takes the QMetaType.Type,
    before it the QVariant.Type of the same number (Int 2, Double 6, String 10)."""
    try:
        return QgsField(name, field_type)
    except TypeError:
        return QgsField(name, int(field_type))


def statistics_fields(polygon_fields: QgsFields) -> QgsFields:
    """The statistics' fields, then the polygons' own (one of the same name as a statistic gets a suffix)."""
    fields = QgsFields()
    for name, field_type in FIELDS:
        fields.append(typed_field(name, field_type))
    return QgsProcessingUtils.combineFields(fields, polygon_fields)


class SpeckleStatsAlgorithm(DespeckNetAlgorithm):
    INPUTS, BAND, INPUT_DOMAIN, POLYGONS = "INPUTS", "BAND", "INPUT_DOMAIN", "POLYGONS"
    OUTPUT, OUTPUT_HTML, ENL, CX = "OUTPUT", "OUTPUT_HTML", "ENL", "CX"
    ARGUMENTS = {"raster": "INPUTS", "polygons": "POLYGONS"}

    def name(self):
        return "specklestats"

    def displayName(self):  # noqa: N802 - QGIS API
        return self.tr("Speckle statistics on homogeneous areas (ENL, Cx)")

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.tr(
            "For each polygon (draw them over homogeneous areas: a lake, a uniform field) and each raster "
            "(e.g. the original, the despeckled image, the estimated speckle): pixel count, mean, standard "
            "deviation, equivalent number of looks ENL = mean²/variance (higher is smoother) and coefficient "
            "of variation Cx = std/mean (lower is smoother), computed on intensity. Polygons are reprojected to "
            "each raster's CRS; nodata and pixels outside the raster are left out; polygons with fewer than "
            f"{MIN_PIXELS} pixels get a warning.<br>The HTML report shows, per polygon, the histogram of "
            "intensity over its mean and the fitted Gamma law with its number of looks. ENL and CX outputs give "
            "the first polygon on the first raster, for the modeler. The table and the report are written only "
            "once every statistic is known; no output may be one of the inputs."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, self.tr("Rasters"), QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterNumber(self.BAND, self.tr("Band (0: every band)"),
                                                       QgsProcessingParameterNumber.Integer, 1, minValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.INPUT_DOMAIN, self.tr("Input domain"), DOMAIN_LABELS, defaultValue=0))
        self.addParameter(QgsProcessingParameterFeatureSource(self.POLYGONS, self.tr("Homogeneous areas"), [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Statistics"), QgsProcessing.TypeVector))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, self.tr("HTML report"), "HTML files (*.html)", optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber(self.ENL, self.tr("ENL (first polygon, first raster)")))
        self.addOutput(QgsProcessingOutputNumber(self.CX, self.tr("Cx (first polygon, first raster)")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        source = self.parameterAsSource(parameters, self.POLYGONS, context)
        if source is None:
            raise QgsProcessingException("POLYGONS is not a readable polygon layer.")
        if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.PolygonGeometry:
            raise QgsProcessingException("POLYGONS holds no polygons (points or lines): draw polygons over homogeneous areas.")
        band = self.parameterAsInt(parameters, self.BAND, context)
        domain = DOMAINS[self.parameterAsEnum(parameters, self.INPUT_DOMAIN, context)]
        html_path = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        # Every statistic first: no output exists before all of them are known.
        attributes = {feature.id(): (feature.geometry(), feature.attributes()) for feature in source.getFeatures()}
        rows = []
        for k, layer in enumerate(layers):
            self._check_cancel(feedback)
            path = self.gdal_source(layer, "INPUTS")
            polygons = [(fid, geom.asWkt()) for fid, geom in geometries_in_crs(source, layer.crs(), context)]
            if not polygons:
                raise QgsProcessingException("POLYGONS holds no polygon: draw at least one over a homogeneous area.")
            for b in (self.run_core(band_numbers, path) if band == 0 else [band]):
                stats = self.run_core(region_statistics, path, [w for _, w in polygons], b, domain,
                                      keep_values=bool(html_path), progress=self.progress(feedback).without_percent())
                rows += self._rows(polygons, stats, layer.name(), b, layer.bandCount(), feedback)
            feedback.setProgress(90.0 * (k + 1) / len(layers))
        if rows and all(st.pixels == 0 for _, _, _, st in rows):
            raise QgsProcessingException("No polygon of POLYGONS overlaps a valid pixel of INPUTS: the polygons lie "
                                         "outside the rasters (check both cover the same area).")
        self._check_cancel(feedback)
        return self._write_outputs(parameters, context, rows, html_path, source, attributes)

    @staticmethod
    def _rows(polygons, stats, name, band, bands, feedback):
        rows = []
        label = name if bands == 1 else f"{name} band {band}"
        for (fid, _), st in zip(polygons, stats):
            if st.pixels == 0:
                feedback.pushWarning(f"Polygon {fid} does not overlap {label} (or covers only its nodata): "
                                     "no statistics. Check that the polygons lie over the raster.")
            elif st.too_small:
                feedback.pushWarning(f"Polygon {fid} covers {st.pixels} valid pixel(s) of {label}: "
                                     f"fewer than {MIN_PIXELS}, its ENL and Cx are unreliable.")
            rows.append((fid, name, band, st))
        return rows

    @staticmethod
    def _check_cancel(feedback):
        from ..core.progress import termination_requested

        if feedback.isCanceled() or termination_requested():
            raise QgsProcessingException("Cancelled by the user; no output was written.")

    def _write_outputs(self, parameters, context, rows, html_path, source, attributes):
        """The HTML report into a partial file, the table, then the report into place."""
        tmp = None
        if html_path:
            remove_stale_partials(html_path)
            tmp = partial_path(html_path)
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(region_report([(str(fid), name if b == 1 else f"{name} band {b}", st)
                                            for fid, name, b, st in rows]))
            except OSError as exc:
                remove_quietly(tmp)
                raise QgsProcessingException(f"Writing OUTPUT_HTML {html_path} failed ({exc.strerror or exc}); "
                                             "a file already there is unchanged.") from exc
        polygon_fields = source.fields()
        try:
            fields = statistics_fields(polygon_fields)
            # the polygons themselves, so that ENL and Cx can be mapped beside the rasters
            sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, source.wkbType(),
                                              source.sourceCrs())
            if sink is None:
                raise QgsProcessingException("OUTPUT (the statistics table) cannot be created.")
            for fid, name, b, st in rows:
                f = QgsFeature(fields)
                geometry, values = attributes.get(fid, (None, [None] * polygon_fields.count()))
                if geometry is not None:
                    f.setGeometry(geometry)
                f.setAttributes([int(fid), name, int(b), st.pixels]
                                + [_finite(v) for v in (st.mean, st.std, st.enl, st.cv, st.gamma_looks)]
                                + list(values))
                if not sink.addFeature(f, QgsFeatureSink.FastInsert):
                    raise QgsProcessingException(f"Writing OUTPUT (the statistics table) failed: {sink.lastError()}")
            # OGR writes a CSV or GeoJSON as the sink closes, after this returned: closed here and read back, a
            # full disk left an empty file behind a run reported done
            del sink
            _check_table(dest, len(rows), context)
            first = rows[0][3]
            results = {self.OUTPUT: dest, self.ENL: _finite(first.enl), self.CX: _finite(first.cv)}
            if tmp:
                try:
                    commit_files([(tmp, html_path)])
                except OutputError as exc:
                    raise QgsProcessingException(f"OUTPUT_HTML: {exc}") from exc
                results[self.OUTPUT_HTML] = html_path
            return results
        finally:
            if tmp:
                remove_quietly(tmp)


def _check_table(dest: str, rows: int, context) -> None:
    """The statistics table at `dest` holds its `rows` (a layer of the run's own store is in memory)."""
    if context.temporaryLayerStore().mapLayer(dest) is not None or dest.startswith("memory:"):
        return
    layer = QgsVectorLayer(dest, "statistics", "ogr")
    count = layer.featureCount() if layer.isValid() else -1
    del layer
    if count != rows:
        path = dest.split("|")[0]
        if "|" not in dest:  # a file of its own (not a layer of a GeoPackage holding others): not left half-written
            remove_quietly(path)
        raise QgsProcessingException(
            f"Writing OUTPUT (the statistics table) {path} failed: it holds {max(count, 0)} of its {rows} rows (a full "
            "disk, or a folder that does not take the file?). Free space or choose another place, and run again.")


def _finite(value):
    """NULL in tables and outputs instead of NaN/inf, which JSON and attribute tables cannot hold."""
    return value if value is not None and math.isfinite(value) else None
