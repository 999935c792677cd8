"""Run a cohort: every case in parallel processes, resumable, one summary table.

Layout of the output folder::

    DIR/predictions.csv                  one row per case (PREDICTION_COLUMNS)
    DIR/cases/<case_id>/n-stage.json     the result (its presence = case finished)
    DIR/cases/<case_id>/images/n-staging-segmentation/output.mha
    DIR/cases/<case_id>/error.json       instead of n-stage.json when the case failed

A case runs into a hidden temporary folder that is renamed to
``cases/<case_id>`` when it is complete, so a killed run never leaves a
half-written case behind; a re-run skips every case whose n-stage.json exists
and is valid, and retries the others (failed ones included). ``predictions.csv``
is rebuilt from the per-case folders at the end of every run, so it is complete
after a resume, and ``nstage evaluate --pred`` reads it as it is. ``nstage
gc-run`` writes the same layout and shares :func:`write_predictions`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nstage.errors import InputError, NStageError, OutputError

PREDICTION_COLUMNS = ["case_id", "n_stage", "n_stage_9th", "p_N0", "p_N1", "p_N2", "p_N3",
                      "stations", "status", "error"]
# Written as numbers (formatted from floats here); every other column is text and made
# spreadsheet-safe (nstage.io.csvsafe).
NUMERIC_COLUMNS = frozenset({"p_N0", "p_N1", "p_N2", "p_N3"})
LOCK = ".nstage.lock"
RESULT_JSON = "n-stage.json"
ERROR_JSON = "error.json"
OVERLAY = Path("images") / "n-staging-segmentation" / "output.mha"
CASES = "cases"
PREDICTIONS = "predictions.csv"
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_PENDING = "pending"
# Exit code of ``nstage batch`` / ``nstage gc-run`` when the run finished but some
# cases failed (0: all done, 2: the run itself could not start).
EXIT_SOME_FAILED = 3

_BAD_ID = re.compile(r"[/\\\x00-\x1f]")

#: ``runner(ct, pet, out_dir, options) -> dict`` writes out_dir/n-stage.json (+ overlay).
Runner = Callable[[Path, "Path | None", Path, object], dict]


@dataclass(frozen=True)
class Case:
    """One case of a cohort.

    Attributes
    ----------
    case_id : str
        Name of the case (folder name, or the CSV's case_id); also its output folder.
    ct : Path
        CT file or folder; for a case folder the folder itself (Grand Challenge
        layout, DICOM study or two NIfTI files: :func:`nstage.io.load_study` decides).
    pet : Path or None
        PET file or folder; None when ``ct`` is a folder holding both.
    """

    case_id: str
    ct: Path
    pet: Path | None = None


def check_case_id(case_id: str, where: str | Path) -> str:
    """Return ``case_id`` stripped, or raise when it cannot be a folder name."""
    cid = str(case_id).strip()
    if not cid or cid in (".", "..") or cid.startswith(".") or _BAD_ID.search(cid):
        raise InputError(f"case_id {case_id!r} cannot be used as a folder name", where,
                         "use letters, digits, '-', '_' or '.' (not first)")
    return cid


def _case_folder_input(folder: Path) -> Path:
    """The folder to read for a case: ``<case>/input`` when it holds a GC ``images/`` tree."""
    inner = folder / "input"
    if not (folder / "images").is_dir() and (inner / "images").is_dir():
        return inner
    return folder


def discover_cases(source: str | Path) -> list[Case]:
    """The cases of a cohort: a folder of case folders, or a CSV ``case_id,ct,pet``.

    CSV paths are relative to the CSV's folder; an empty ``pet`` means ``ct`` is a
    folder holding both series. Case folders are taken in name order; hidden
    entries and plain files are ignored.

    Raises
    ------
    InputError
        The source does not exist, holds no case, has a duplicate or unusable
        case_id, or the CSV lacks a column.
    """
    source = Path(source)
    if source.is_file():
        return _cases_from_csv(source)
    if not source.is_dir():
        raise InputError("not found", source, "give a folder of case folders or a CSV "
                                              "with case_id,ct,pet")
    if (source / "images").is_dir():
        raise InputError("this is one case (it holds images/), not a folder of cases", source,
                         "put each case in its own sub-folder, or use 'nstage run'")
    cases = [Case(check_case_id(p.name, source), _case_folder_input(p))
             for p in sorted(source.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not cases:
        raise InputError("holds no case folder", source,
                         "put each case (images/ct + images/pet, DICOM or NIfTI) in a sub-folder")
    return cases


def _cases_from_csv(path: Path) -> list[Case]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path) from None
    reader = csv.DictReader(io.StringIO(text))
    fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
    for col in ("case_id", "ct"):
        if col not in fields:
            raise InputError(f"column {col!r} is missing", path,
                             "the table needs the columns case_id,ct,pet")
    cases, seen = [], set()
    for line, row in enumerate(reader, start=2):
        cid = check_case_id(row.get(fields["case_id"]) or "", f"{path}, line {line}")
        if cid in seen:
            raise InputError(f"duplicate case_id {cid!r} on line {line}", path,
                             "each case must appear once")
        seen.add(cid)
        ct = (row.get(fields["ct"]) or "").strip()
        pet = (row.get(fields["pet"]) or "").strip() if "pet" in fields else ""
        if not ct:
            raise InputError(f"empty ct path for case {cid!r} on line {line}", path)
        cases.append(Case(cid, path.parent / ct, (path.parent / pet) if pet else None))
    if not cases:
        raise InputError("holds no case", path, "add one row per case: case_id,ct,pet")
    return cases


# ---------------------------------------------------------------------------
# Per-case outputs


def case_dir(out: str | Path, case_id: str) -> Path:
    return Path(out) / CASES / case_id


def read_result(folder: str | Path) -> dict | None:
    """The case's n-stage.json when it exists and is valid (schema), else None."""
    from nstage.schema import schema_errors

    path = Path(folder) / RESULT_JSON
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or schema_errors(obj):
        return None
    return obj


def read_error(folder: str | Path) -> str | None:
    """The recorded error message of a failed case, or None."""
    try:
        obj = json.loads((Path(folder) / ERROR_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(obj.get("error") or "unknown error") if isinstance(obj, dict) else None


def is_finished(out: str | Path, case_id: str) -> bool:
    return read_result(case_dir(out, case_id)) is not None


def write_json_file(path: Path, obj: dict) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def new_work_dir(out: str | Path, case_id: str) -> Path:
    """A fresh hidden folder next to the case folders, for one attempt at a case."""
    root = Path(out) / CASES
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".work-{case_id}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    return work


def commit_case_dir(work: Path, out: str | Path, case_id: str) -> Path:
    """Move a finished attempt into ``cases/<case_id>``, replacing an older attempt.

    Directory renames are atomic; in the short window between moving the old
    folder aside and moving the new one in, a killed run leaves no case folder,
    so the case simply runs again.
    """
    final = case_dir(out, case_id)
    old = None
    if final.exists():
        old = final.with_name(f".old-{case_id}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_stale_work_dirs(out: str | Path) -> None:
    """Remove attempts left behind by a killed run (hidden ``.work-``/``.old-`` folders)."""
    root = Path(out) / CASES
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and (p.name.startswith(".work-") or p.name.startswith(".old-")):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------
# predictions.csv (shared with gc-run)


def _fmt_prob(x) -> str:
    if x is None:
        return ""
    try:
        return f"{float(x):.6g}"
    except (TypeError, ValueError):
        return ""


def prediction_row(case_id: str, result: dict | None, status: str, error: str = "") -> dict:
    """One predictions.csv row from a result dict (or None for a case without result)."""
    row = dict.fromkeys(PREDICTION_COLUMNS, "")
    row.update(case_id=case_id, status=status, error=" ".join(str(error or "").split()))
    if result is not None:
        probs = result.get("probabilities") or {}
        stations = []
        for node in result.get("nodes") or []:
            st = node.get("station")
            if st and st not in stations:
                stations.append(str(st))
        row.update(n_stage=result.get("n_stage", ""), n_stage_9th=result.get("n_stage_9th", ""),
                   stations=";".join(stations),
                   **{f"p_{k}": _fmt_prob(probs.get(k)) for k in ("N0", "N1", "N2", "N3")})
    return row


def collect_rows(out: str | Path, case_ids: Iterable[str],
                 pending: dict[str, tuple[str, str]] | None = None) -> list[dict]:
    """predictions.csv rows for ``case_ids`` from their folders under ``out/cases``.

    A valid n-stage.json gives status ``ok``; a recorded error gives ``error``
    with its message; otherwise the status (and message) from ``pending`` or
    ``pending`` (not run yet).
    """
    rows = []
    for cid in case_ids:
        folder = case_dir(out, cid)
        result = read_result(folder)
        if result is not None:
            rows.append(prediction_row(cid, result, STATUS_OK))
            continue
        error = read_error(folder)
        if error is not None:
            rows.append(prediction_row(cid, None, STATUS_ERROR, error))
            continue
        status, message = (pending or {}).get(cid, (STATUS_PENDING, ""))
        rows.append(prediction_row(cid, None, status, message))
    return rows


def write_predictions(out: str | Path, case_ids: Iterable[str],
                      pending: dict[str, tuple[str, str]] | None = None) -> Path:
    """(Re)build ``out/predictions.csv`` from the per-case folders, atomically.

    Text cells that a spreadsheet would run as a formula get a leading ``'``
    (:mod:`nstage.io.csvsafe`); the probability columns are numbers.
    """
    from nstage.io.csvsafe import safe_row

    out = Path(out)
    rows = collect_rows(out, case_ids, pending)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PREDICTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(safe_row(row, NUMERIC_COLUMNS) for row in rows)
    path = out / PREDICTIONS
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------
# One run per output folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """``DIR/.nstage.lock``: one ``nstage batch`` / ``gc-run`` writing into a folder at a time.

    The lock is an ``flock`` on the file, which the kernel releases when its process dies
    however it dies, so a lock left by a killed run is simply taken over; the file names the
    holder's PID for the message a second run prints. Without ``fcntl`` (Windows) the file
    is created exclusively and taken over when the PID in it is no longer running.

    Raises
    ------
    OutputError
        From :meth:`acquire`, when another live process holds the lock.
    """

    def __init__(self, out: str | Path, command: str):
        self.path = Path(out) / LOCK
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> tuple[str, str]:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return str(info.get("pid", "?")), str(info.get("command", "nstage"))
        except (OSError, ValueError, AttributeError):
            return "?", "nstage"

    def _refuse(self) -> OutputError:
        pid, command = self._holder()
        return OutputError(
            f"another '{command}' (PID {pid}) is writing into this output folder", self.path,
            hint="wait for it to finish or use another --out; delete this lock file only if "
                 "no such process runs")

    def _stamp(self, fd: int) -> None:
        info = {"pid": os.getpid(), "command": self.command, "host": os.uname().nodename
                if hasattr(os, "uname") else "", "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            self._acquire_by_pid()
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._refuse() from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file the previous holder removed after we opened it
                self._stamp(fd)
                self._fd = fd
                return
            os.close(fd)

    def _acquire_by_pid(self) -> None:  # pragma: no cover - not POSIX
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, _ = self._holder()
                if pid.isdigit() and _pid_alive(int(pid)):
                    raise self._refuse() from None
                self.path.unlink(missing_ok=True)  # a dead run's lock: take it over
                continue
            self._stamp(fd)
            self._fd = fd
            return
        raise self._refuse()

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: no one can slip in
        os.close(self._fd)
        self._fd = None


# ---------------------------------------------------------------------------
# Running


def pipeline_runner(ct: Path, pet: Path | None, out_dir: Path, options) -> dict:
    """The default runner: :func:`nstage.pipeline.run_case`."""
    from nstage.pipeline import run_case

    return run_case(ct, pet, out_dir, options)


def run_one(case: Case, out: str | Path, options, runner: Runner = pipeline_runner
            ) -> tuple[str, str, str]:
    """Run one case into a temporary folder and commit it; never raises for the case.

    Returns
    -------
    (case_id, status, error) : tuple of str
        status ``ok`` or ``error``; error is the one-line message.
    """
    work = new_work_dir(out, case.case_id)
    t0 = time.time()
    try:
        for p in (case.ct, case.pet):
            if p is not None and not Path(p).exists():
                raise InputError("not found", p, "check the path in the cases table")
        runner(Path(case.ct), None if case.pet is None else Path(case.pet), work, options)
        if read_result(work) is None:
            raise RuntimeError(f"the run finished without a valid {RESULT_JSON}")
        commit_case_dir(work, out, case.case_id)
        return case.case_id, STATUS_OK, ""
    except NStageError as exc:
        message, detail = exc.one_line(), None
    except Exception as exc:  # one failing case must not stop the cohort
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        detail = traceback.format_exc()
    except BaseException:  # stopped (Ctrl-C, SIGTERM): leave no half-done attempt behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    # A failed attempt keeps no partial outputs: only its error record.
    shutil.rmtree(work, ignore_errors=True)
    work = new_work_dir(out, case.case_id)
    record = {"case_id": case.case_id, "error": message, "ct": str(case.ct),
              "pet": None if case.pet is None else str(case.pet),
              "seconds": round(time.time() - t0, 3)}
    if detail:
        record["traceback"] = detail
    write_json_file(work / ERROR_JSON, record)
    commit_case_dir(work, out, case.case_id)
    return case.case_id, STATUS_ERROR, message


@dataclass
class BatchSummary:
    """Counts of one ``nstage batch`` run."""

    total: int
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    predictions: Path | None = None


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="case", file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


class BatchStopped(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM); finished cases are kept.

    A KeyboardInterrupt, so everything that handles Ctrl-C handles it too.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`BatchStopped` in the main thread for the block's duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise BatchStopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _per_worker_memory(options, workers: int):
    """Each of ``workers`` parallel cases gets its share of the memory (unless one was given)."""
    if workers <= 1 or getattr(options, "max_memory_gb", "n/a") is not None:
        return options
    from dataclasses import replace

    from nstage.io.limits import memory_limit

    return replace(options, max_memory_gb=memory_limit().nbytes / 1e9 / workers)


def run_batch(source: str | Path | list[Case], out: str | Path, options=None, *,
              workers: int = 1, runner: Runner | None = None,
              progress: bool = True) -> BatchSummary:
    """Run every unfinished case of a cohort and rebuild ``predictions.csv``.

    The output folder is checked first and locked for the run (``DIR/.nstage.lock``: a second
    run on the same folder is refused). SIGTERM and Ctrl-C stop the run: the workers are ended,
    the cases in flight leave nothing behind, ``predictions.csv`` is rebuilt and
    :class:`BatchStopped` (or KeyboardInterrupt) is raised. Workers also end when this process
    dies, however it dies.

    Parameters
    ----------
    source : path or list of Case
        A folder of case folders, a CSV ``case_id,ct,pet``, or the cases.
    out : path
        Output folder (see module docstring for its layout).
    options : nstage.pipeline.RunOptions, optional
        Passed to ``runner`` (default ``RunOptions()``). With several workers and no
        ``max_memory_gb``, each case gets its share of the memory available.
    workers : int
        Parallel processes; 1 runs the cases one after the other in this process.
    runner : callable, optional
        ``runner(ct, pet, out_dir, options)`` (default :func:`pipeline_runner`); must be a
        module-level function (it is sent to worker processes, started with ``spawn``).
    progress : bool
        Show a progress bar with ETA on stderr.

    Raises
    ------
    InputError
        The cohort cannot be read.
    OutputError
        The output folder is a file, cannot be written, or another run holds its lock.
    """
    from nstage.io.outputs import check_output_folder

    if options is None:
        from nstage.pipeline import RunOptions

        options = RunOptions()
    options = _per_worker_memory(options, workers)
    runner = runner or pipeline_runner
    out = Path(out)
    check_output_folder(out)
    cases = source if isinstance(source, list) else discover_cases(source)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out, "nstage batch"), _stop_on_sigterm():
        return _run_locked(cases, out, options, workers, runner, progress)


def _run_locked(cases: list[Case], out: Path, options, workers: int, runner: Runner,
                progress: bool) -> BatchSummary:
    clean_stale_work_dirs(out)  # only safe under the lock: no other run is writing
    ids = [c.case_id for c in cases]
    todo = [c for c in cases if not is_finished(out, c.case_id)]
    summary = BatchSummary(total=len(cases), skipped=len(cases) - len(todo))
    bar = _progress(len(cases), summary.skipped, "nstage batch") if progress else None
    running: list[str] = []

    def show() -> None:
        if bar is not None:  # the cases in flight, by name
            bar.set_postfix_str(f"ok {summary.ok + summary.skipped}, failed {summary.failed}"
                                + (f"; running {', '.join(running)}" if running else ""))

    def started(case_id: str) -> None:
        running.append(case_id)
        show()

    def record(case_id: str, status: str, error: str) -> None:
        if case_id in running:
            running.remove(case_id)
        if status == STATUS_OK:
            summary.ok += 1
        else:
            summary.failed += 1
            summary.errors[case_id] = error
        if bar is not None:
            bar.write(_case_line(out, case_id, status, error), file=sys.stderr)
            show()
            bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for case in todo:
                started(case.case_id)
                record(*run_one(case, out, options, runner))
        else:
            _run_parallel(todo, out, options, runner, workers, record, started)
    except BaseException:
        clean_stale_work_dirs(out)  # the workers are gone: their attempts can go too
        raise
    finally:
        if bar is not None:
            bar.close()
        # Rebuilt even after an interruption, so the table always matches the folders.
        summary.predictions = write_predictions(out, ids)
    return summary


def _case_line(out: Path, case_id: str, status: str, error: str) -> str:
    """One line per finished case for the progress output: its N stage or its error."""
    if status != STATUS_OK:
        return f"nstage batch: {case_id}: {status}: {error}"
    result = read_result(case_dir(out, case_id)) or {}
    return (f"nstage batch: {case_id}: {result.get('n_stage', '?')} "
            f"({result.get('n_stage_9th', '?')} 9th edition)")


def _end_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (the batch run) dies, however it dies.

    Linux: the kernel sends SIGTERM on the parent's death (:func:`nstage.forked.
    signal_on_parent_death`). Every platform: a watchdog thread notices when the parent is
    gone (the process is re-parented) and exits; it also covers a parent that died before the
    prctl call.
    """
    from nstage.forked import signal_on_parent_death

    signal_on_parent_death(signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="nstage-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int) -> None:
    """First thing in every worker: end with the parent; Ctrl-C is the parent's to handle;
    the allocator settings of ``nstage run`` (:mod:`nstage.memory`)."""
    from nstage.memory import avoid_huge_page_stalls, reuse_freed_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(parent_pid)
    reuse_freed_memory()
    avoid_huge_page_stalls()


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's worker processes now (a case in flight is abandoned)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def _run_parallel(todo: list[Case], out: Path, options, runner: Runner, workers: int,
                  record: Callable[[str, str, str], None],
                  started: Callable[[str], None] = lambda case_id: None) -> None:
    """Keep ``workers`` cases in flight; a dead worker fails only its own cases."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = list(reversed(todo))
    while queue:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_worker_init, initargs=(os.getpid(),))
        try:
            running: dict[Future, Case] = {}
            broken = False
            while (queue or running) and not broken:
                while queue and len(running) < workers:
                    case = queue.pop()
                    running[pool.submit(run_one, case, out, options, runner)] = case
                    started(case.case_id)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    case = running.pop(fut)
                    try:
                        record(*fut.result())
                    except BrokenProcessPool:
                        broken = True
                        _record_died(out, case, record)
            if broken:
                # Cases that were in flight when a worker died cannot be told apart
                # from the one that killed it: each gets the same error record.
                for fut, case in running.items():
                    fut.cancel()
                    _record_died(out, case, record)
        except BaseException:
            _terminate_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _record_died(out: Path, case: Case, record: Callable[[str, str, str], None]) -> None:
    message = _died(out, case)
    record(case.case_id, STATUS_ERROR if message else STATUS_OK, message)


def _died(out: Path, case: Case) -> str:
    if is_finished(out, case.case_id):
        return ""  # it finished before the pool broke
    message = ("the worker process died while running this case (out of memory or a crash "
               "in a native library); run it alone with 'nstage run' to see why")
    work = new_work_dir(out, case.case_id)
    write_json_file(work / ERROR_JSON, {"case_id": case.case_id, "error": message})
    commit_case_dir(work, out, case.case_id)
    return message
