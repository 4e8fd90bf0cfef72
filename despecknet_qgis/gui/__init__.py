"""GUI pieces (map tools, toolbar). Never imported by the Processing provider or qgis_process."""
