"""Exclusive use of a run folder: ``RunLock``.

    with RunLock("runs/x"):      # ValueError if another process holds runs/x
        ...

The lock is an advisory ``fcntl.flock`` on ``folder/.lock``, which also holds the owner's pid for
messages. The kernel drops a flock when its process dies (even by SIGKILL), so a lock is never
stale while it is held, and taking one is a single atomic call: two processes can never both hold
it (reading a pid, then unlinking and recreating the file, as an earlier version did, is a race).
The file is removed on release while still locked; a process that opened the old file just before
checks, after locking, that the path still names the file it locked, and tries again if not.

A ``.lock`` that holds a pid but no flock was left by a run that was killed, or by an older jdm:
its pid's process is gone (the lock is taken over, with a note) or, after pid reuse, is some
other live process (refused with a message that says the lock is probably stale and how to
clear it). Where ``fcntl`` does not exist (Windows), creating the file with ``O_EXCL`` is the
lock and a leftover file must be deleted by hand; the message says so.
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunLock"]


class RunLock:
    """Exclusive use of a run folder (see the module docstring). Re-entrant within a process (the
    CLI holds it for a whole command, ``Trainer.fit`` again for its loop)."""

    _held: dict[Path, list[int]] = {}  # folder → [nesting depth, fd of the locked file]

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"

    def __enter__(self) -> "RunLock":
        key = self.folder.resolve()
        if key in RunLock._held:
            RunLock._held[key][0] += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = self._acquire() if fcntl is not None else self._acquire_exclusive_create()
        RunLock._held[key] = [1, fd]
        return self

    def __exit__(self, *exc) -> None:
        key = self.folder.resolve()
        RunLock._held[key][0] -= 1
        if RunLock._held[key][0] == 0:
            _, fd = RunLock._held.pop(key)
            self.path.unlink(missing_ok=True)  # still locked: nobody can take the dying file
            os.close(fd)  # releases the flock

    # ------------------------------------------------------------------------------ flock
    def _acquire(self) -> int:
        for _ in range(100):  # another try only when the file was replaced under us
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                owner = _read_pid(fd)
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise ValueError(f"run folder {self.folder} is in use by process "
                                 f"{owner if owner is not None else '(pid not yet written)'} "
                                 f"(it holds the lock {self.path}); wait for it to finish or "
                                 "choose another --out / out_dir") from None
            if not self._still_names(fd):  # its holder removed it between our open and flock
                os.close(fd)
                continue
            try:
                self._check_previous_owner(fd)
            except ValueError:
                os.close(fd)
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        raise ValueError(f"could not lock run folder {self.folder} ({self.path} keeps being "
                         "replaced)")

    def _still_names(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _check_previous_owner(self, fd: int) -> None:
        """A pid left in a file nobody had locked: a run killed without releasing it, or an
        older jdm's pid-only lock. Take it over if that process is gone, else refuse."""
        owner = _read_pid(fd)
        if owner is None or owner <= 0 or owner == os.getpid():
            return
        if _process_alive(owner):
            raise ValueError(
                f"run folder {self.folder} may be in use by process {owner}: {self.path} names it, "
                "but it does not hold the lock, so the lock is probably stale (left by a killed "
                "run, its pid since reused by another program) or from an older jdm; if no jdm "
                f"run uses this folder, delete {self.path} and run again")
        print(f"note: {self.path} was a stale lock (process {owner} no longer runs); taking it "
              "over", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------ no fcntl
    def _acquire_exclusive_create(self) -> int:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise ValueError(f"run folder {self.folder} is locked ({self.path}); if no run uses "
                             "it, the lock is stale: delete that file") from None
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None  # empty or half-written


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
