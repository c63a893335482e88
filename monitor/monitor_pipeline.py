#!/usr/bin/env python
"""Evaluate monitor/pipeline_alerts.json over the run log (and the warehouse); see `--help`.

Exit code: 0 no alert or info only, 1 warning, 2 error, 3 critical, 4 the rules file was refused.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medical_etl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
