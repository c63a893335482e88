#!/usr/bin/env python
"""Stage 4: YOLO object detection on photos not yet analysed, stored in the warehouse (see `--help`)."""
import sys

from medical_etl.cli import main

if __name__ == "__main__":
    sys.exit(main(["enrich", *sys.argv[1:]]))
