#!/usr/bin/env python
"""Stage 3: run the dbt project medical_warehouse (dbt build: models and tests) (see `--help`)."""
import sys

from medical_etl.cli import main

if __name__ == "__main__":
    sys.exit(main(["transform", *sys.argv[1:]]))
