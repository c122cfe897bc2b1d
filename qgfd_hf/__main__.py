"""`python -m qgfd_hf ...` runs the `qgfd-hf` command line (see `qgfd_hf.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
