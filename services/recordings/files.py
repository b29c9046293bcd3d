"""A recording's audio under the storage root, reached without following symbolic links.

A recording's audio has two places: its playback path and the same path under `restricted/`
(the index says which one holds it; a crash between a move and its commit may leave it at the
other). Every operation walks the path's folders from the root one at a time, each opened with
O_NOFOLLOW | O_DIRECTORY relative to the one before: a folder on the way that is a symbolic
link is refused wherever it points, and cannot be swapped in between a check and its use. The
file itself is only lstat-ed, hard-linked (without following) or unlinked, so a link there is
removed or moved as itself, never its target. A move is a hard link then an unlink, not a
rename: link(2) fails on an existing target where rename(2) would replace it, so a file written
at the target by anyone, at any moment, is never overwritten. The root is configuration and is
trusted as given.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from shared.telemetry.messaging import TRACER

RESTRICTED_DIR = "restricted"
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A recording's path that could lead outside the storage root."""


class TargetExists(FileExistsError):
    """A move whose target already holds another file: refused, never overwritten."""


def places(relative: str) -> tuple[str, str]:
    """(playback path, restricted path) of a recording whose index row says `relative`."""
    parts = relative.split("/")
    if relative.startswith("/") or "\x00" in relative or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath("recordings.path: must be relative, without empty, '.' or '..' parts")
    if parts[0] == RESTRICTED_DIR:
        parts = parts[1:]
    if not parts or parts[0] == RESTRICTED_DIR:  # its two places would overlap another's
        raise UnsafePath("recordings.path: must name a file, under restricted/ at most once")
    playback = "/".join(parts)
    return playback, f"{RESTRICTED_DIR}/{playback}"


def resolve(root: Path, relative: str) -> Path:
    """The file of an index row, checked by its text alone (see `places`); the operations below
    are what refuse links on the way."""
    places(relative)
    return root / relative


def present(root: Path, relative: str) -> bool:
    """Something (a file, a link, anything) is at `relative`."""
    folder = _open_folder(root, relative, create=False)
    if folder is None:
        return False
    try:
        os.stat(_name(relative), dir_fd=folder, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(folder)


def remove(root: Path, relative: str) -> None:
    """Unlink `relative` (a link itself, never its target); already gone counts as done."""
    folder = _open_folder(root, relative, create=False)
    if folder is None:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_name(relative), dir_fd=folder)
    finally:
        os.close(folder)


def move(root: Path, source: str, target: str) -> None:
    """Move the file at `source` to `target`. Idempotent: nothing at `source` means it has moved
    already (or is gone) and the index follows. A different file at `target` is refused; the
    caller holds the recording's row lock, so no other command moves this recording meanwhile,
    and the index's uniqueness means no other recording has either place."""
    with TRACER.start_as_current_span(
        "file move", attributes={"lethe.file.operation": "move", "lethe.file.count": 1}
    ):
        source_folder = _open_folder(root, source, create=False)
        if source_folder is None:
            return
        try:
            moving = _lstat(source_folder, _name(source))
            if moving is None:
                return
            target_folder = _open_folder(root, target, create=True)
            assert target_folder is not None  # create=True: made on the way, or an error
            try:
                _link_then_unlink(source_folder, _name(source), target_folder, _name(target), moving)
            finally:
                os.close(target_folder)
        finally:
            os.close(source_folder)


def _link_then_unlink(
    source_folder: int, source: str, target_folder: int, target: str, moving: os.stat_result
) -> None:
    """Give the file at `source` the name `target`, then drop `source`. The lstat first is only
    a shortcut for a move half done before (linked, not yet unlinked); the link is what refuses
    a target taken meanwhile, atomically, since the check alone could be overtaken."""
    there = _lstat(target_folder, target)
    if there is None:
        try:
            # follow_symlinks=False: a symbolic link at `source` is linked as itself (Linux).
            os.link(source, target, src_dir_fd=source_folder, dst_dir_fd=target_folder, follow_symlinks=False)
            there = moving  # the target names the source's file now
        except FileExistsError:
            there = _lstat(target_folder, target)  # written since the check (None: gone again)
    if there is None or (there.st_dev, there.st_ino) != (moving.st_dev, moving.st_ino):
        raise TargetExists(errno.EEXIST, "recordings.path: another file is at the target; not overwritten")
    os.unlink(source, dir_fd=source_folder)  # the target holds the file now: two names of one


def _name(relative: str) -> str:
    return relative.rsplit("/", 1)[-1]


def _lstat(folder: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_folder(root: Path, relative: str, create: bool) -> int | None:
    """A descriptor of the folder holding `relative`'s file (the caller closes it), or None
    when a folder on the way does not exist and `create` is false."""
    places(relative)
    if create:
        root.mkdir(parents=True, exist_ok=True)  # configuration: trusted as given (see above)
    try:
        folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no storage yet: nothing is in it
    for name in relative.split("/")[:-1]:
        try:
            child = _open_child(folder, name, create)
        finally:
            os.close(folder)
        if child is None:
            return None
        folder = child
    return folder


def _open_child(parent: int, name: str, create: bool) -> int | None:
    try:
        return _open_dir(parent, name)
    except FileNotFoundError:
        if not create:
            return None
    with contextlib.suppress(FileExistsError):  # another command's move may create it too
        os.mkdir(name, dir_fd=parent)
    return _open_dir(parent, name)


def _open_dir(parent: int, name: str) -> int:
    try:
        return os.open(name, _FOLDER, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath("recordings.path: a folder on the way is a symbolic link or a file") from exc
        raise
