"""Map tool: draw a polygon over a homogeneous area and read ENL and Cx of every visible raster.

Left click adds a vertex, right click (or double click) closes the polygon, Esc starts
over. The statistics of the chosen band (the toolbar's band box) of every visible GDAL
raster layer are shown in the message bar and the log, side by side on the same polygon;
a layer's variables despecknet_band and despecknet_domain choose its own band and domain,
and despecknet outputs are read in the domain they record. Each polygon is also kept in a
memory layer that despecknet:specklestats can use.
"""
from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsExpressionContextUtils,
    QgsFeature,
    QgsGeometry,
    QgsMessageLog,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor

from ..core.errors import DespeckNetError
from ..core.region_stats import region_statistics

LAYER_NAME = "deSpeckNet homogeneous areas"


BAND_VARIABLE, DOMAIN_VARIABLE = "despecknet_band", "despecknet_domain"


def layer_band_and_domain(layer, band: int, domain: str) -> tuple[int, str]:
    """What to measure on one layer, so that a noisy amplitude and a despeckled dB layer compare.

    The layer's own variables despecknet_band and despecknet_domain (Layer Properties >
    Variables) come first; then the domain a despecknet output records in its metadata
    (DESPECKNET_OUTPUT_DOMAIN); then the toolbar's band and domain.
    """
    from ..core.domain import DOMAINS, recorded_domain

    scope = QgsExpressionContextUtils.layerScope(layer)
    own_band, own_domain = scope.variable(BAND_VARIABLE), scope.variable(DOMAIN_VARIABLE)
    try:
        band = int(own_band) if own_band not in (None, "") else band
    except (TypeError, ValueError):
        QgsMessageLog.logMessage(f"{layer.name()}: {BAND_VARIABLE} = {own_band!r} is not a band number: band {band} "
                                 "used.", "deSpeckNet", Qgis.MessageLevel.Warning)
    if own_domain in DOMAINS:
        return band, own_domain
    recorded = recorded_domain(layer.source())
    return band, recorded if recorded in DOMAINS else domain


def stats_for_visible_rasters(geometry: QgsGeometry, crs, layers, domain: str, project=None, band: int = 1):
    """(layer name, RegionStats) for each GDAL raster among `layers`; polygon given in `crs`.

    `band` and `domain` are the toolbar's, unless a layer says otherwise (layer_band_and_domain).
    A raster without that band is left out, with a message in the log."""
    project = project or QgsProject.instance()
    results = []
    default_band, default_domain = band, domain
    for layer in layers:
        if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
            continue
        band, domain = layer_band_and_domain(layer, default_band, default_domain)
        if band > layer.bandCount():
            QgsMessageLog.logMessage(f"{layer.name()} has {layer.bandCount()} band(s), no band {band}: left out.",
                                     "deSpeckNet", Qgis.MessageLevel.Warning)
            continue
        geom = QgsGeometry(geometry)
        if crs != layer.crs():
            geom.transform(QgsCoordinateTransform(crs, layer.crs(), project.transformContext()))
        try:
            stats = region_statistics(layer.source(), [geom.asWkt()], band, domain)[0]
        except DespeckNetError as exc:
            QgsMessageLog.logMessage(f"{layer.name()}: {exc}", "deSpeckNet", Qgis.Warning)
            continue
        results.append((layer.name(), stats))
    return results


def format_stats(results) -> str:
    if not results:
        return "no visible GDAL raster under the polygon"
    return "; ".join(
        f"{name}: ENL {st.enl:.2f}, Cx {st.cv:.3f} ({st.pixels} px{', too few' if st.too_small else ''})"
        for name, st in results
    )


def visible_layers(canvas) -> list:
    """The canvas's layers, the members of "render as group" layers included (QGIS 3.24+ returns the
    group itself unless asked to expand it; 3.22 has no such groups and no argument)."""
    try:
        return canvas.layers(True)
    except TypeError:
        return canvas.layers()


class HomogeneousAreaTool(QgsMapTool):
    def __init__(self, canvas, domain_getter=lambda: "intensity", message_bar=None, keep_polygons=True,
                 band_getter=lambda: 1):
        super().__init__(canvas)
        self.canvas = canvas
        self.domain_getter = domain_getter
        self.band_getter = band_getter
        self.message_bar = message_bar
        self.keep_polygons = keep_polygons
        self.points: list[QgsPointXY] = []
        self.band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
        self.band.setColor(QColor(242, 193, 78, 90))
        self.band.setStrokeColor(QColor(200, 120, 0))
        self.band.setWidth(2)
        self.last_results = []
        self.layer = None
        self.setCursor(Qt.CursorShape.CrossCursor)

    def canvasPressEvent(self, event):  # noqa: N802 - QGIS API
        if event.button() == Qt.MouseButton.LeftButton:
            self.points.append(self.toMapCoordinates(event.pos()))
            self._redraw()
        elif event.button() == Qt.MouseButton.RightButton:
            self.finish()

    def canvasDoubleClickEvent(self, event):  # noqa: N802 - QGIS API
        self.finish()

    def canvasMoveEvent(self, event):  # noqa: N802 - QGIS API
        if self.points:
            self._redraw(self.toMapCoordinates(event.pos()))

    def keyPressEvent(self, event):  # noqa: N802 - QGIS API
        if event.key() == Qt.Key.Key_Escape:
            self.reset()

    def _redraw(self, floating=None):
        pts = self.points + ([floating] if floating is not None else [])
        self.band.setToGeometry(QgsGeometry.fromPolygonXY([pts]) if len(pts) >= 3 else QgsGeometry.fromPolylineXY(pts), None)

    def reset(self):
        self.points = []
        self.band.reset(QgsWkbTypes.PolygonGeometry)

    def finish(self):
        if len(self.points) < 3:
            self.reset()
            return None
        geometry = QgsGeometry.fromPolygonXY([self.points])
        crs = self.canvas.mapSettings().destinationCrs()
        self.reset()
        self.last_results = stats_for_visible_rasters(geometry, crs, visible_layers(self.canvas), self.domain_getter(),
                                                      band=int(self.band_getter()))
        text = format_stats(self.last_results)
        QgsMessageLog.logMessage(text, "deSpeckNet", Qgis.Info)
        if self.message_bar is not None:
            self.message_bar.pushMessage("deSpeckNet", text, Qgis.Info, 15)
        if self.keep_polygons:
            self._keep(geometry, crs)
        return self.last_results

    def _scratch_layer(self, crs):
        """The layer that keeps the drawn polygons; a new one when the project dropped the last (Project >
        New, the layer removed): the Python wrapper of a deleted layer raises on any call."""
        project = QgsProject.instance()
        try:
            alive = self.layer is not None and project.mapLayer(self.layer.id()) is self.layer
        except RuntimeError:  # wrapped C/C++ object has been deleted
            alive = False
        if not alive:
            self.layer = QgsVectorLayer("Polygon?field=id:integer", LAYER_NAME, "memory")
            self.layer.setCrs(crs)  # also a CRS without an authority id (a custom projection)
            project.addMapLayer(self.layer)
        return self.layer

    def _keep(self, geometry, crs):
        layer = self._scratch_layer(crs)
        if layer.crs() != crs:  # the canvas CRS changed since the layer was made: store in the layer's CRS
            geometry = QgsGeometry(geometry)
            geometry.transform(QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()))
        feature = QgsFeature(self.layer.fields())
        feature.setGeometry(geometry)
        feature.setAttributes([self.layer.featureCount() + 1])
        self.layer.dataProvider().addFeatures([feature])
        self.layer.updateExtents()
        self.layer.triggerRepaint()

    def deactivate(self):
        self.reset()
        super().deactivate()
