"""A recording's two places, and file operations that never follow a symbolic link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.recordings import files

AUDIO = "2026/11/R-1.wav"


def put(root: Path, relative: str, content: bytes = b"audio") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "/etc/passwd", "2026/../../x.wav", "2026//x.wav", "./x.wav", "restricted",
     "restricted/restricted/x.wav", "x\x00.wav"],
)  # fmt: skip
def test_a_path_that_could_leave_the_root_or_overlap_another_is_refused(path: str) -> None:
    with pytest.raises(files.UnsafePath, match=r"recordings\.path"):
        files.places(path)


def test_both_forms_of_a_path_give_the_same_two_places() -> None:
    assert files.places(AUDIO) == files.places(f"restricted/{AUDIO}") == (AUDIO, f"restricted/{AUDIO}")


def test_remove_takes_a_link_away_and_never_its_target(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", put(tmp_path, "outside/secret.wav")
    inside = put(root, "2026/11/OTHER.wav")
    (root / "2026/11/R-1.wav").symlink_to(outside)
    (root / "2026/11/R-2.wav").symlink_to(inside)
    files.remove(root, AUDIO)
    files.remove(root, "2026/11/R-2.wav")
    assert not files.present(root, AUDIO) and not files.present(root, "2026/11/R-2.wav")
    assert outside.read_bytes() == b"audio" and inside.read_bytes() == b"audio"


def test_a_folder_on_the_way_that_is_a_link_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", put(tmp_path, f"outside/{AUDIO}")
    root.mkdir()
    (root / "2026").symlink_to(outside.parent.parent)
    for act in (files.present, files.remove):
        with pytest.raises(files.UnsafePath, match="symbolic link"):
            act(root, AUDIO)
    with pytest.raises(files.UnsafePath):
        files.move(root, AUDIO, f"restricted/{AUDIO}")
    assert outside.read_bytes() == b"audio"


def test_a_restricted_folder_that_is_a_link_receives_nothing(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    source = put(root, AUDIO)
    elsewhere.mkdir()
    (root / "restricted").symlink_to(elsewhere)
    with pytest.raises(files.UnsafePath):
        files.move(root, AUDIO, f"restricted/{AUDIO}")
    assert source.exists() and not any(elsewhere.iterdir())


def test_a_move_never_overwrites_another_file(tmp_path: Path) -> None:
    source, other = put(tmp_path, AUDIO, b"subject"), put(tmp_path, f"restricted/{AUDIO}", b"other")
    with pytest.raises(files.TargetExists, match="not overwritten"):
        files.move(tmp_path, AUDIO, f"restricted/{AUDIO}")
    assert source.read_bytes() == b"subject" and other.read_bytes() == b"other"


def test_a_move_is_idempotent(tmp_path: Path) -> None:
    put(tmp_path, AUDIO, b"subject")
    for _ in range(2):  # the second finds it moved already
        files.move(tmp_path, AUDIO, f"restricted/{AUDIO}")
    assert (tmp_path / "restricted" / AUDIO).read_bytes() == b"subject"
    assert not files.present(tmp_path, AUDIO)
    # Two names of one file (a hard link someone made): the source name goes, the file stays.
    (tmp_path / AUDIO).hardlink_to(tmp_path / "restricted" / AUDIO)
    files.move(tmp_path, AUDIO, f"restricted/{AUDIO}")
    assert not files.present(tmp_path, AUDIO) and files.present(tmp_path, f"restricted/{AUDIO}")
    files.move(tmp_path, "2026/12/NONE.wav", "restricted/2026/12/NONE.wav")  # nothing anywhere
    assert not (tmp_path / "restricted/2026/12").exists()


def test_a_file_written_at_the_target_after_the_check_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes the target between the move's look and its act: the link fails
    on it, where a rename would have replaced it."""
    source, target = put(tmp_path, AUDIO, b"subject"), tmp_path / "restricted" / AUDIO
    real = files._lstat

    def then_someone_writes(folder: int, name: str) -> os.stat_result | None:
        found = real(folder, name)
        if target.parent.exists() and os.fstat(folder).st_ino == target.parent.stat().st_ino:
            if not target.exists():
                target.write_bytes(b"other")  # just after the target was found free
        return found

    monkeypatch.setattr(files, "_lstat", then_someone_writes)
    with pytest.raises(files.TargetExists, match="not overwritten"):
        files.move(tmp_path, AUDIO, f"restricted/{AUDIO}")
    assert source.read_bytes() == b"subject" and target.read_bytes() == b"other"


def test_a_move_half_done_before_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A move whose link was made but whose unlink failed (a crash, an I/O error) is tried
    again: the target is the same file, so only the source name goes."""
    put(tmp_path, AUDIO, b"subject")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(5, "I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "unlink", fail)
        with pytest.raises(OSError, match="I/O error"):
            files.move(tmp_path, AUDIO, f"restricted/{AUDIO}")
    source, target = tmp_path / AUDIO, tmp_path / "restricted" / AUDIO
    assert source.stat().st_ino == target.stat().st_ino  # two names of one file
    files.move(tmp_path, AUDIO, f"restricted/{AUDIO}")
    assert not files.present(tmp_path, AUDIO) and target.read_bytes() == b"subject"


def test_a_link_is_moved_as_itself_never_its_target(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", put(tmp_path, "outside/secret.wav", b"not ours")
    (root / "2026/11").mkdir(parents=True)
    (root / AUDIO).symlink_to(outside)
    files.move(root, AUDIO, f"restricted/{AUDIO}")
    moved = root / "restricted" / AUDIO
    assert moved.is_symlink() and moved.readlink() == outside and not files.present(root, AUDIO)
    assert outside.read_bytes() == b"not ours" and outside.stat().st_nlink == 1


def test_storage_that_does_not_exist_yet_holds_nothing(tmp_path: Path) -> None:
    # The first seed of a new stack: the storage root is not there until something is written.
    assert not files.present(tmp_path / "not-yet", "2026/11/R-1.wav")
