"""The `qgfd-hf` console script: `qgfd_hf.cli.main`, with `--help` that imports neither torch nor transformers.

    qgfd-hf --help
    qgfd-hf train --help

`import qgfd_hf` registers the QGFD configs with transformers, which imports torch (seconds;
docs/architecture.md, "Start-up"). The command line is a subpackage of qgfd_hf, so
this module imports it with registration deferred (`QGFD_HF_DEFER_REGISTRATION=1` for the duration
of the import only); `qgfd_hf.cli.main` registers once the arguments are parsed, before running a
command, so `--help` and `--version` return without it.
"""

import os
import sys

DEFER = "QGFD_HF_DEFER_REGISTRATION"


def main(argv=None) -> int:
    previous = os.environ.get(DEFER)
    os.environ[DEFER] = "1"
    try:
        from qgfd_hf.cli import main as cli_main
    finally:
        if previous is None:
            os.environ.pop(DEFER, None)
        else:
            os.environ[DEFER] = previous
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
