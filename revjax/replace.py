"""Folders that commands write as a whole (``revjax export --flat``, ``revjax import``), replaced safely.

A command that writes a folder assembles it beside its destination, then renames it into place, and leaves a marker
file in it (``.revjax-output.json``: which command wrote it, from what, when). With ``--force`` it may replace an
existing folder only when that folder is

* empty, or the command's own earlier output (it holds that command's marker),
* not the source the command reads from (nor inside it, nor holding it),
* and not in use: the folder's run lock (:mod:`revjax.runlock`) is taken for the swap, so a training saving into it
  refuses the replacement with one sentence naming the holder.

What is replaced is never deleted: it is renamed to ``<parent>/.<name>.replaced-<UTC time>`` and that path is
returned (the command prints it).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from revjax.errors import RevjaxError
from revjax.runlock import LOCK_NAME, RunLock

MARKER = ".revjax-output.json"


class ReplaceRefused(RevjaxError):
    """A folder a command would replace is not its to replace."""


def utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def read_marker(folder: Path) -> dict | None:
    """The marker a revjax command left in ``folder``, or None (missing, unreadable, or not a JSON object)."""
    path = folder / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: Path, command: str, source: str | Path, **details) -> None:
    record = {"written_by": f"revjax {command}", "source": str(source),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **details}
    (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def overlaps(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same folder or one holds the other (both resolved)."""
    return a == b or a in b.parents or b in a.parents


def move_aside(path: Path) -> Path:
    """Rename ``path`` (a file or folder) to ``<parent>/.<name>.replaced-<UTC time>``; returns the new path."""
    target = path.parent / f".{path.name}.replaced-{utc_stamp()}"
    os.rename(path, target)
    return target


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` with the permissions ``mkdir`` would give it (``mkdtemp`` makes it private)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o777 & ~mask)
    return path


def _contents(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)


def output_path(out: str | Path) -> Path:
    """``out`` made absolute with its parent's symbolic links resolved (``out`` itself may be a link, and is refused)."""
    out = Path(out).expanduser().absolute()
    return out.parent.resolve() / out.name


def check_replaceable(out: str | Path, command: str, *, force: bool, sources: Sequence[str | Path],
                      looks_like_old_output: Callable[[Path], bool] = lambda _: False, held: bool = False) -> None:
    """Refuse (one sentence) unless ``command`` may write ``out``: see the module docstring (``held``: the caller
    holds ``out``'s run lock)."""
    out = output_path(out)
    for source in (Path(s).expanduser().resolve() for s in sources):
        if overlaps(out, source):
            raise ReplaceRefused(f"{out} is (or holds, or lies inside) {source}, which revjax {command} reads from; "
                                 "choose another output folder")
    if out.is_symlink():
        raise ReplaceRefused(f"{out} is a symbolic link; give the real folder, or another output folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise ReplaceRefused(f"{out} exists and is not a folder; choose another output folder")
    if (out / LOCK_NAME).exists() and not held:  # a run folder: refuse first if a training (or anything else) holds it
        with RunLock(out, command):
            pass
    if not _contents(out):
        return
    marker = read_marker(out)
    if marker is not None and marker.get("written_by") == f"revjax {command}":
        if not force:
            raise ReplaceRefused(f"{out} already holds an earlier revjax {command}; pass --force to replace it "
                                 "(it is moved aside, not deleted)")
        return
    if looks_like_old_output(out):
        raise ReplaceRefused(f"{out} looks like a revjax {command} made before revjax marked its output folders, so "
                             f"--force will not replace it; to replace it deliberately, move it away first "
                             f"(mv {out} {out}.old) and run the command again")
    raise ReplaceRefused(f"{out} already exists and holds files that revjax {command} did not write "
                         f"({', '.join(_contents(out)[:4])}{', …' if len(_contents(out)) > 4 else ''}); "
                         "choose another output folder (--force replaces only revjax's own earlier output)")


def publish_folder(out: str | Path, command: str, fill: Callable[[Path], None], *, force: bool,
                   sources: Sequence[str | Path] = (), source: str | Path = "",
                   looks_like_old_output: Callable[[Path], bool] = lambda _: False) -> Path | None:
    """Write the folder ``out`` with ``fill(tmp)`` beside it and rename it into place; returns the path the replaced
    folder was moved aside to, or None when nothing was replaced.

    Every check is made before ``fill`` runs (nothing is written when one fails) and again, under ``out``'s run
    lock, just before the swap.
    """
    out = output_path(out)
    check = dict(force=force, sources=sources, looks_like_old_output=looks_like_old_output)
    check_replaceable(out, command, **check)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, f".{out.name}.{command}-")
    try:
        fill(tmp)
        write_marker(tmp, command, source or (sources[0] if sources else ""))
        if not out.exists() or not any(out.iterdir()):
            os.rename(tmp, out)  # replaces an empty folder; fails rather than replace one that has files by now
            return None
        with RunLock(out, command):
            check_replaceable(out, command, **check, held=True)
            aside = move_aside(out)
            os.rename(tmp, out)
        print(f"moved the folder revjax {command} replaced aside to {aside}")
        return aside
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
