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
