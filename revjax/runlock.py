"""One writer per run folder: an advisory lock file that names its holder.

``<run dir>/.lock`` is held with ``fcntl.flock`` for as long as a training (or an export reading the folder) runs,
and holds one JSON line naming the holder: host, pid, command and start time. A second holder is refused with one
sentence naming the first. The kernel drops the flock when its process dies, so a lock left by a dead process on
this host is taken over with a warning. A lock naming another host cannot be checked from here and is refused; the
message says how to clear it. Releasing empties the file (it is never deleted, so two processes can never lock two
different files of the same name).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import warnings
from pathlib import Path

from revjax.errors import RevjaxError

LOCK_NAME = ".lock"


class RunFolderLocked(RevjaxError):
    """Another process holds the run folder."""


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command', 'unknown command')})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir, "training"):`` — exclusive use of ``run_dir`` (created if missing with ``create``).

    ``beside=True`` keeps the lock file next to the folder (``<parent>/.<name>.lock``), for a folder that is renamed
    into place whole; ``wait=True`` waits for a live holder on this host instead of refusing (saying so once)."""

    def __init__(self, run_dir: str | Path, purpose: str, *, create: bool = False, beside: bool = False,
                 wait: bool = False):
        folder = Path(run_dir).expanduser().resolve()
        self.folder = folder
        self.path = folder.parent / f".{folder.name}{LOCK_NAME}" if beside else folder / LOCK_NAME
        self.purpose, self.create, self.wait = purpose, create, wait
        self._fd: int | None = None

    def _read_holder(self) -> dict:
        try:
            text = self.path.read_text().strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {"host": "?", "pid": "?", "since": "?", "command": "unreadable lock file"}

    def acquire(self) -> "RunLock":
        try:
            if self.create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.parent.is_dir():
                raise RunFolderLocked(f"the run folder {self.folder} does not exist; check the path")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o664)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunFolderLocked(f"the lock file {self.path} is a symbolic link, which revjax never writes "
                                      "through; delete the link and run the command again") from None
            raise RunFolderLocked(f"cannot open the lock file {self.path} ({err.strerror}); check the folder's "
                                  "permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunFolderLocked(f"cannot lock {self.path} ({err.strerror})") from None
            holder = self._read_holder()
            if not self.wait or holder.get("host") != socket.gethostname():
                os.close(fd)
                raise RunFolderLocked(
                    f"{self.folder} is in use by {_describe(holder)}; wait for it to finish or stop it"
                ) from None
            print(f"waiting for {_describe(holder)}, which holds {self.path}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        holder = self._read_holder()
        host = socket.gethostname()
        if holder and holder.get("host") != host:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunFolderLocked(
                f"{self.folder} is marked in use by {_describe(holder)}, which cannot be checked from {host}; "
                f"if that process has ended, delete {self.path}"
            )
        if holder and holder.get("pid") != os.getpid():
            state = "has ended" if not _pid_alive(int(holder.get("pid", 0) or 0)) else "no longer holds it"
            warnings.warn(f"taking over the lock of {self.folder} from {_describe(holder)}, which {state}",
                          stacklevel=2)
        record = {"host": host, "pid": os.getpid(), "command": f"{self.purpose}: {' '.join(sys.argv)}"[:300],
                  "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
