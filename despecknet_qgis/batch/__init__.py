"""Despeckle archives on a Dask cluster: many scenes, many machines, the plugin's own core.

`python -m despecknet_qgis.batch SCENES... --output-dir DIR` sends one task per band and
scene to Dask distributed (a LocalCluster on loopback, or `--scheduler tcp://host:8786`).
Each task calls the same `despeckle_raster` as despecknet:despeckle, so the outputs are
bit-identical to the plugin's. Outputs appear atomically; a JSON-lines manifest in the
output folder makes reruns skip finished work and retry failures.

Layers, each importing only downward and none importing QGIS:
- `options`: CLI flags and the core's keyword arguments, derived from `despeckle_raster`'s
  signature, so a new core option needs no change here;
- `plan`: inputs, output names, fingerprints and the manifest (no Dask);
- `tasks`: what a worker runs (imports Dask only to honour a cancel);
- `run`: the Dask client, submission, progress bar and cancel;
- `cli`: the command line.

Dask is imported only inside `run` (and lazily in `tasks`): the QGIS plugin works without it.
"""
