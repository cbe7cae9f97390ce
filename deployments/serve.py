"""One-host mode without a work pool: serve the scheduled deployments of a dbbackup.yaml.

    python deployments/serve.py [dbbackup.yaml]      # the same as `dbbackup serve --config ...`

Runs until interrupted; each flow run is a child process of this one. The
deployments, schedules and flow retries come from the config's `schedules:`
section (docs/operations.md); the same times as deployments/prefect.yaml by default.
"""

import sys
from pathlib import Path

from prefect_dbbackup.flows.cli import main

if __name__ == "__main__":
    config = sys.argv[1] if len(sys.argv) > 1 else "dbbackup.yaml"
    sys.argv = [sys.argv[0], "serve", "--config", str(Path(config))]
    main()
