"""The output folder: checked before any analysis, written through a staging folder.

1. :func:`check_output_folder` (before the images are read): the folder exists or can be
   made, is a folder, and a file can be created in it. :func:`check_free_space` (once the CT's
   size is known, before the analysis): its disk has room for the expected outputs.
2. :class:`OutputStaging`: every writer writes into a hidden staging folder inside the output
   folder (so on the same file system, and also where the output folder is a mount point that
   cannot itself be renamed, as Grand Challenge's ``/output``). :meth:`OutputStaging.commit`
   then moves the files in with renames, ``n-stage.json`` last (``nstage batch`` resumes on
   it), after moving aside the outputs of an earlier run, ``n-stage.json`` first: the folder
   never shows an old result beside new files, and outputs an earlier run wrote that this
   run does not (the report after ``--no-report``) are removed. Only the file names nstage
   writes are touched; any other file in the folder is left alone.
3. On any failure the staging folder is removed and the old outputs are put back; a folder the
   run created is removed again when it stays empty.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from nstage.errors import OutputError
from nstage.io.integrity import human_bytes

STAGING_PREFIX = ".nstage-staging-"
_PREVIOUS = ".previous"
# Beyond the images: n-stage.json, report PNG + PDF, with room to spare (bytes).
_FIXED_OUTPUT_BYTES = 16_000_000
# A writer that fails with less than this free (bytes) failed because the disk is full.
_FULL_BELOW = 1_000_000
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT} if hasattr(errno, "EDQUOT") else {errno.ENOSPC}


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(out_dir: str | Path) -> None:
    """Refuse an output folder that is a file, cannot be made or cannot be written, before
    anything else runs. Nothing is created (a probe file is removed again).

    Raises
    ------
    OutputError
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError("is a file, not a folder", out, hint="give a folder for the outputs")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise OutputError(f"cannot be created: {base} is a file", out,
                          hint="give a folder for the outputs")
    try:
        fd, probe = tempfile.mkstemp(prefix=".nstage-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        what = "cannot be written" if base == out.absolute() else f"cannot be created in {base}"
        raise OutputError(f"{what} ({exc.strerror or exc})", out,
                          hint="choose a folder you can write to") from None


def expected_output_bytes(ct_size: Iterable[int]) -> int:
    """Generous estimate of what one run writes for a CT of ``ct_size`` voxels (bytes).

    The overlay is one byte per CT voxel before compression, a DICOM SEG at most about as much
    again; the JSON and the visual report add a few MB.
    """
    voxels = 1
    for n in ct_size:
        voxels *= int(n)
    return 2 * voxels + _FIXED_OUTPUT_BYTES


def check_free_space(out_dir: str | Path, needed: int) -> None:
    """Refuse a disk without room for ``needed`` bytes of outputs.

    Raises
    ------
    OutputError
    """
    base = _nearest_existing(Path(out_dir))
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return  # the file system does not say; the writes will tell
    if free < needed:
        raise OutputError(f"its disk has {human_bytes(free)} free, the outputs need about "
                          f"{human_bytes(needed)}", out_dir,
                          hint="free some space or choose another output folder")


def output_error(exc: BaseException, out_dir: Path, doing: str) -> OutputError:
    """One-line :class:`OutputError` for a failed write (disk full, no permission...)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        problem = f"the disk is full ({exc.strerror}) while {doing}"
    elif isinstance(exc, OSError):
        problem = f"cannot write while {doing} ({exc.strerror or exc})"
    else:  # SimpleITK's writers raise RuntimeError, without the errno
        free = _free_bytes(out_dir)
        detail = " ".join(str(exc).split())[-160:]
        if free is not None and free < _FULL_BELOW:
            problem = f"the disk is full ({human_bytes(free)} free) while {doing} ({detail})"
        else:
            room = "" if free is None else f"; {human_bytes(free)} free on its disk"
            problem = f"cannot write while {doing} ({detail}{room})"
    return OutputError(f"{problem}; nothing was written", out_dir,
                       hint="free some space or choose another output folder")


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_nearest_existing(path)).free
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_staging(out_dir: Path) -> None:
    """Remove staging folders left by runs that were killed (their process is gone)."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if not (p.name.startswith(STAGING_PREFIX) and p.is_dir()):
            continue
        pid = p.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


class OutputStaging:
    """A hidden staging folder inside ``out_dir``; use as a context manager.

    Writers write into :attr:`path`; :meth:`commit` moves everything written there into
    ``out_dir``. Leaving the ``with`` block without a commit (an exception) removes the
    staging folder, and the folders the run created when they are empty.

    Parameters
    ----------
    out_dir : Path
    known : iterable of Path
        Relative paths of every file nstage writes into an output folder; those an earlier run
        left and this run does not write are removed on commit.
    last : Path
        The file that marks a finished result (``n-stage.json``): removed first, moved in last.
    """

    def __init__(self, out_dir: str | Path, known: Iterable[Path], last: Path):
        self.out_dir = Path(out_dir)
        self.known = [Path(k) for k in known]
        self.last = Path(last)
        self.path = self.out_dir / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._created: list[Path] = []
        self.committed = False

    def __enter__(self) -> OutputStaging:
        missing = []
        folder = self.out_dir.absolute()
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
            remove_stale_staging(self.out_dir)
            self.path.mkdir()
        except OSError as exc:
            self._cleanup()
            raise output_error(exc, self.out_dir, "creating the output folder") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if not self.committed:
            for folder in reversed(self._created):
                try:
                    folder.rmdir()
                except OSError:
                    break

    def written(self) -> list[Path]:
        """Relative paths of the files in the staging folder."""
        return sorted(p.relative_to(self.path) for p in self.path.rglob("*")
                      if p.is_file() and _PREVIOUS not in p.relative_to(self.path).parts[:1])

    def commit(self) -> list[Path]:
        """Move the staged files into the output folder (see the module docstring).

        Returns
        -------
        list of Path
            The relative paths now in the output folder from this run.

        Raises
        ------
        OutputError
            A rename failed; the output folder is as it was before.
        """
        produced = self.written()
        previous = self.path / _PREVIOUS
        old_first = sorted({*self.known, *produced}, key=lambda r: r != self.last)
        new_last = sorted(produced, key=lambda r: r == self.last)
        moved_old: list[Path] = []
        moved_new: list[Path] = []
        try:
            for rel in old_first:
                target = self.out_dir / rel
                if target.is_file() or target.is_symlink():
                    (previous / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(target, previous / rel)
                    moved_old.append(rel)
            for rel in new_last:
                (self.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path / rel, self.out_dir / rel)
                moved_new.append(rel)
        except OSError as exc:
            self._roll_back(moved_old, moved_new, previous)
            raise output_error(exc, self.out_dir, "moving the outputs into place") from None
        self.committed = True
        self._remove_empty_folders(moved_old, produced)
        return produced

    def _roll_back(self, moved_old: list[Path], moved_new: list[Path], previous: Path) -> None:
        for rel in moved_new:
            (self.out_dir / rel).unlink(missing_ok=True)
        for rel in moved_old:
            try:
                os.replace(previous / rel, self.out_dir / rel)
            except OSError:
                continue

    def _remove_empty_folders(self, removed: list[Path], produced: list[Path]) -> None:
        """Folders (e.g. ``images/...``) that held only an old output nobody rewrote."""
        keep = {p.parent for p in produced}
        for rel in removed:
            folder = (self.out_dir / rel).parent
            while folder != self.out_dir and folder.relative_to(self.out_dir) not in keep:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent
