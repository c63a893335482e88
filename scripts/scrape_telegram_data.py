#!/usr/bin/env python
"""Stage 1: scrape the configured Telegram channels into the data lake (see `--help`)."""
import sys

from medical_etl.cli import main

if __name__ == "__main__":
    sys.exit(main(["scrape", *sys.argv[1:]]))
