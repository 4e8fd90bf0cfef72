"""deSpeckNet for QGIS: deep-learning SAR despeckling as Processing algorithms."""


def classFactory(iface):  # noqa: N802 - QGIS's plugin entry point
    from .plugin import DespeckNetPlugin

    return DespeckNetPlugin(iface)
