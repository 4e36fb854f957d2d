"""What ``python -m jdm`` needs before anything heavy is imported: a Ctrl-C while torch loads (a
few seconds) ends with one line and a non-zero exit, not a traceback through the imports.

Installed by ``jdm/__init__.py`` only when jdm is started with ``python -m``, so a library user's
own ``sys.excepthook`` is never touched. Ctrl-C later in a command is handled by ``jdm.cli``.
"""
from __future__ import annotations

import sys

__all__ = ["quiet_interrupts"]


def quiet_interrupts() -> None:
    """Print an uncaught ``KeyboardInterrupt`` as one line (Python still exits as Ctrl-C does,
    with status 130 in a shell); every other exception keeps the usual hook."""
    default = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print("jdm: interrupted (Ctrl-C) while starting; nothing was done", file=sys.stderr)
            return
        default(kind, value, traceback)

    sys.excepthook = hook
