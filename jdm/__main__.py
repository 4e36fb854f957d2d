"""``python -m jdm``: the command line (``jdm.cli``)."""
import sys

from .cli import build_parser, main

__all__ = ["main", "build_parser"]

if __name__ == "__main__":
    sys.exit(main())
