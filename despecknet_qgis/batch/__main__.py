"""`python -m despecknet_qgis.batch`: see despecknet_qgis/batch/cli.py (and --help)."""
import sys

from .cli import main

if __name__ == "__main__":  # worker processes spawned by a LocalCluster import this module too
    sys.exit(main())
