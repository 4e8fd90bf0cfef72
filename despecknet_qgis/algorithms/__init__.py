"""Processing algorithms: one module each, thin wrappers around despecknet_qgis.core."""
