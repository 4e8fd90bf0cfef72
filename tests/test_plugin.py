"""The plugin object: provider registration headless, toolbar and map tool with a GUI."""
from qgis.core import QgsApplication


def test_init_processing_without_iface_registers_the_provider_once(qgis_processing):
    from despecknet_qgis import classFactory

    registry = QgsApplication.processingRegistry()
    earlier = registry.providerById("despecknet")
    if earlier is not None:  # registered by another test's fixture: take it out for this test
        registry.removeProvider(earlier)
    plugin = classFactory(None)  # what qgis_process does
    plugin.initProcessing()
    plugin.initGui()  # no iface: no GUI, no second provider
    provider = registry.providerById("despecknet")
    assert provider is plugin.provider
    ids = {a.id() for a in provider.algorithms()}
    assert ids == {"despecknet:despeckle", "despecknet:temporallabel", "despecknet:train", "despecknet:finetune",
                   "despecknet:specklestats", "despecknet:quality", "despecknet:despecklebatch",
                   "despecknet:classicfilter",
                   # the example models (examples/models/*.model3)
                   "despecknet:despeckle_stats", "despecknet:label_train_despeckle",
                   "despecknet:finetune_despeckle_folder"}
    # A second copy of the plugin neither registers a duplicate nor removes the first one's provider.
    other = classFactory(None)
    other.initProcessing()
    other.unload()
    assert registry.providerById("despecknet") is provider
    plugin.unload()
    assert registry.providerById("despecknet") is None


def test_gui_adds_a_checkable_action_that_activates_the_map_tool(qgis_iface, qgis_processing):
    from despecknet_qgis import classFactory
    from despecknet_qgis.gui.homogeneous_area_tool import HomogeneousAreaTool

    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert plugin.action.isCheckable() and isinstance(plugin.tool, HomogeneousAreaTool)
        plugin.action.trigger()
        assert qgis_iface.mapCanvas().mapTool() is plugin.tool
        assert plugin.domain_box.currentText() == "intensity"
    finally:
        plugin.unload()


def test_reloading_the_plugin_leaves_one_action_one_tool_and_no_stale_message(qgis_iface, qgis_processing,
                                                                             monkeypatch):
    """Each reload left one more QAction and map tool behind, and the "Install..." message of an unloaded
    plugin stayed (its button opened that plugin's installer)."""
    from qgis.PyQt.QtWidgets import QApplication

    from despecknet_qgis import classFactory
    from despecknet_qgis.core import dependencies
    from despecknet_qgis.gui.homogeneous_area_tool import HomogeneousAreaTool

    try:
        from qgis.PyQt.QtGui import QAction
    except ImportError:
        from qgis.PyQt.QtWidgets import QAction
    canvas, window = qgis_iface.mapCanvas(), qgis_iface.mainWindow()
    monkeypatch.setattr(dependencies, "missing", lambda *a, **k: [dependencies.Requirement("torch", "torch", "training")])

    def ours():
        QApplication.processEvents()
        from qgis.PyQt.QtCore import QCoreApplication, QEvent

        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        return (len([a for a in window.findChildren(QAction) if a.text() == "ENL / Cx of a homogeneous area"]),
                len(canvas.findChildren(HomogeneousAreaTool)))

    before = ours()
    for _ in range(2):
        plugin = classFactory(qgis_iface)
        plugin.initGui()
        assert plugin.message is not None and ours() == (before[0] + 1, before[1] + 1)
        first = plugin.open_installer()
        assert plugin.open_installer() is first  # one dialog, so never two pip runs into one folder
        message = plugin.message
        plugin.unload()
        assert ours() == before and plugin.message is None
        try:
            assert not message.isVisible()
        except RuntimeError:  # deleted with the bar's item: gone as well
            pass
