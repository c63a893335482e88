#!/usr/bin/env python
"""Stage 2: load the data lake into the raw tables in PostgreSQL (see `--help`)."""
import sys

from medical_etl.cli import main

if __name__ == "__main__":
    sys.exit(main(["load", *sys.argv[1:]]))
