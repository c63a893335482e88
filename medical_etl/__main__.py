import sys

from medical_etl.cli import main

if __name__ == "__main__":  # also imported by multiprocessing's spawn: do not run the CLI then
    sys.exit(main())
