"""Run a cohort on Grand Challenge: one algorithm job per case, through ``gcapi``.

Grand Challenge is the scheduler: this module only keeps at most ``max_active``
jobs in flight, polls them with back-off, and downloads each finished job's
``n-stage`` JSON and overlay into the same layout as ``nstage batch``
(``DIR/cases/<case_id>/``, ``DIR/predictions.csv``), so ``nstage evaluate``
works unchanged.

Resuming: ``DIR/gc-ledger.json`` records, per case, the job id and its last
known state, rewritten atomically after every change. A restart polls the jobs
in the ledger instead of uploading their cases again, skips downloaded cases,
and reports failed jobs (``retry_failed`` submits those again).

Creating a job is not idempotent: a connection reset or a server error after the
platform created the job would leave the job without the client knowing it. So
before the request the ledger records the case as ``creating`` with a case
marker, a random token that also goes into the names of the uploaded files (and
so into the names of the job's input images). After a failed or reset request,
and on a restart that finds a case ``creating``, the platform's jobs of this
algorithm are searched for that marker before another job is created; while a
job whose inputs are still being imported cannot be told apart, the case waits
(at most :data:`LOOKUP_PATIENCE_S`). gcapi's own retries never repeat a job
creation that got a server error.

One run per output folder: ``DIR/.nstage.lock`` (as ``nstage batch``).

The API token is read from an environment variable only and is never printed,
logged or written anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nstage.batch import (
    ERROR_JSON,
    OVERLAY,
    RESULT_JSON,
    STATUS_ERROR,
    Case,
    OutputLock,
    commit_case_dir,
    discover_cases,
    is_finished,
    new_work_dir,
    read_result,
    write_json_file,
    write_predictions,
)
from nstage.errors import InputError, NStageError, UsageError

DEFAULT_BASE_URL = "https://grand-challenge.org/api/v1/"
BASE_URL_ENV = "NSTAGE_GC_BASE_URL"
DEFAULT_TOKEN_ENV = "GC_TOKEN"
DEFAULT_MAX_ACTIVE = 16  # the platform's default limit of active jobs per user
LEDGER = "gc-ledger.json"
INPUT_SOCKETS = ("ct", "pet")
JSON_OUTPUT = ("n-stage", "n-stage.json")  # socket slug, relative path
OVERLAY_OUTPUT = ("n-staging-segmentation", "images/n-staging-segmentation")

# Job status strings of grand-challenge.org (ComponentJob.STATUS_CHOICES).
SUCCEEDED = "Succeeded"
FAILED_STATUSES = {"Failed", "Cancelled"}
QUEUED_STATUSES = {"Queued", "Re-Queued", "Validating inputs"}

# Ledger states. "creating": the job creation request was (about to be) sent and its
# answer never recorded; the job may exist. ("submitting" is what older ledgers wrote.)
S_CREATING, S_SUBMITTING, S_QUEUED, S_RUNNING = "creating", "submitting", "queued", "running"
S_PENDING, S_DONE, S_FAILED = "pending", "done", "failed"
ACTIVE_STATES = {S_QUEUED, S_RUNNING}
MAYBE_CREATED = {S_CREATING, S_SUBMITTING}
# How long a case in "creating" waits for jobs whose inputs are still being imported (and so
# cannot be matched to a case yet) before it is created again (seconds).
LOOKUP_PATIENCE_S = 600.0
MARKER_PREFIX = "nstage-"

_IMAGE_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".tif", ".tiff", ".dcm")
# Submission problems that clear up by waiting (rate limit, platform busy, too many jobs).
_RETRY_LATER_CODES = {408, 409, 423, 429, 500, 502, 503, 504}
MAX_SUBMIT_ATTEMPTS = 5


class GrandChallengeError(NStageError):
    """Grand Challenge refused the run (token, algorithm, connection)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------
# Ledger


class Ledger:
    """``case_id -> {state, job, job_url, status, error, ...}`` kept on disk atomically."""

    def __init__(self, path: Path, algorithm: str):
        self.path = path
        self.algorithm = algorithm
        self.cases: dict[str, dict] = {}
        if path.exists():
            import json

            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"job ledger cannot be read ({exc})", path,
                                 "restore it, or move it away to start over (jobs already "
                                 "submitted would then be submitted again)") from None
            if data.get("algorithm") != algorithm:
                raise UsageError(
                    f"this folder's job ledger belongs to algorithm {data.get('algorithm')!r}, "
                    f"not {algorithm!r}", path, "use another --out folder for another algorithm")
            self.cases = dict(data.get("cases") or {})

    def get(self, case_id: str) -> dict:
        return self.cases.get(case_id, {})

    def update(self, case_id: str, **fields) -> None:
        entry = self.cases.setdefault(case_id, {})
        entry.update(fields, updated=_now())
        self.save()

    def save(self) -> None:
        write_json_file(self.path, {"algorithm": self.algorithm, "cases": self.cases})


# ---------------------------------------------------------------------------
# Client


def token_from_env(token_env: str) -> str:
    """The API token from the environment variable ``token_env`` (never from anywhere else)."""
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise UsageError(
            f"the environment variable {token_env} holding the Grand Challenge API token is "
            "not set",
            hint=f"create a token at https://grand-challenge.org/settings/api-tokens/ and "
                 f"'export {token_env}=...'; never put it on the command line")
    return token


def connect(token_env: str = DEFAULT_TOKEN_ENV, base_url: str | None = None):
    """A ``gcapi.Client`` with the token from ``token_env``; checks nothing else yet."""
    try:
        import gcapi
        import httpx
    except ImportError:
        raise UsageError("the 'gcapi' package is not installed",
                         hint="pip install 'nstage[gc]'") from None
    base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if not base_url.endswith("/"):
        base_url += "/"
    token = token_from_env(token_env)
    # gcapi logs failed requests itself; the run reports them in its own words.
    logging.getLogger("gcapi").addHandler(logging.NullHandler())
    logging.getLogger("gcapi").propagate = False
    from gcapi.check_version import UnsupportedVersionError

    try:
        client = gcapi.Client(token=token, base_url=base_url, retry_strategy=_retry_strategy())
    except UnsupportedVersionError as exc:
        raise GrandChallengeError(f"{exc}", hint="pip install --upgrade gcapi") from None
    except httpx.HTTPError as exc:
        raise GrandChallengeError(f"cannot reach Grand Challenge at {base_url}: "
                                  f"{type(exc).__name__}",
                                  hint="check the network and the base URL") from None
    except RuntimeError as exc:
        # gcapi: "Base URL must be https", "Invalid token format"; never contains the token.
        raise GrandChallengeError(f"{exc}", hint=f"check {token_env} and the base URL") from None
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _remember_request]}
    return client


_current_request = threading.local()  # the request each thread is sending (for the retries)


def _remember_request(request) -> None:
    _current_request.request = request


def _retry_strategy():
    """gcapi's back-off, except that a job creation answered with a server error is never sent
    again blindly: the platform may have created the job (gc-run looks it up instead). 429
    (throttled: the request was not processed) is still retried after Retry-After.

    gcapi's strategies see only the response; the request comes from an httpx request hook
    (:func:`_remember_request`) in the same thread.
    """
    from gcapi.retries import SelectiveBackoffStrategy

    class NoBlindJobCreation(SelectiveBackoffStrategy):
        def get_delay(self, latest_response):
            request = getattr(_current_request, "request", None)
            if (request is not None and request.method == "POST"
                    and request.url.path.rstrip("/").endswith("algorithms/jobs")
                    and latest_response.status_code != 429):
                return None
            return super().get_delay(latest_response)

    # gcapi's defaults: 0.1 s doubling, 8 retries (about 25 s).
    return NoBlindJobCreation(backoff_factor=0.1, maximum_number_of_retries=8)


def _http_problem(exc) -> tuple[int | None, str]:
    """Status code and platform message of an httpx error (never the request headers)."""
    response = getattr(exc, "response", None)
    if response is None:
        return None, type(exc).__name__
    text = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            text = "; ".join(f"{k}: {v}" if k not in ("detail",) else str(v)
                             for k, v in body.items())
        else:
            text = str(body)
    except ValueError:
        text = response.text[:300]
    return response.status_code, " ".join(text.split())[:500]


def _auth_error(code: int, text: str, token_env: str) -> GrandChallengeError:
    return GrandChallengeError(
        f"Grand Challenge refused the API token from ${token_env} (HTTP {code}: {text})",
        hint=f"check that {token_env} holds a valid token of a user allowed to run the algorithm")


def check_algorithm(client, slug: str, token_env: str):
    """The algorithm, after checking token, access and the ct/pet sockets."""
    import httpx
    from gcapi.exceptions import MultipleObjectsReturned, ObjectNotFound

    try:
        algorithm = client.algorithms.detail(slug=slug)
    except httpx.HTTPStatusError as exc:
        code, text = _http_problem(exc)
        if code in (401, 403):
            raise _auth_error(code, text, token_env) from None
        raise GrandChallengeError(f"cannot look up algorithm {slug!r} (HTTP {code}: {text})"
                                  ) from None
    except (ObjectNotFound, MultipleObjectsReturned):
        raise GrandChallengeError(
            f"algorithm {slug!r} not found, or this token's user may not use it",
            hint="check --algorithm (the slug in the algorithm's URL) and your access") from None
    except httpx.HTTPError as exc:
        raise GrandChallengeError(f"cannot reach Grand Challenge: {type(exc).__name__}") from None
    for interface in algorithm.interfaces:
        if {s.slug for s in interface.inputs} == set(INPUT_SOCKETS):
            return algorithm
    offered = [sorted(s.slug for s in i.inputs) for i in algorithm.interfaces]
    raise GrandChallengeError(
        f"algorithm {slug!r} has no interface with exactly the inputs ct and pet "
        f"(it offers {offered})", hint="use the nstage algorithm's slug")


# ---------------------------------------------------------------------------
# Inputs of a case


def _image_files(path: Path) -> list[Path]:
    """An image file as a one-element list, or all files of a DICOM/image folder."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if files:
            return files
    raise InputError("no image file found", path, "check the path")


def case_inputs(case: Case) -> dict[str, list[Path]]:
    """Files to upload to the ``ct`` and ``pet`` sockets of one case.

    A case folder must be in Grand Challenge layout (``images/ct/``,
    ``images/pet/``, PET in SUV); a CSV case gives the CT and PET files or
    DICOM folders.
    """
    if case.pet is not None:
        return {"ct": _image_files(case.ct), "pet": _image_files(case.pet)}
    files = {}
    for socket in INPUT_SOCKETS:
        folder = case.ct / "images" / socket
        found = sorted(p for p in folder.glob("*")
                       if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES)) \
            if folder.is_dir() else []
        if len(found) != 1:
            raise InputError(
                f"needs exactly one image in images/{socket}/ (found {len(found)})", case.ct,
                "use the Grand Challenge layout, or a CSV with case_id,ct,pet")
        files[socket] = found
    return files


@contextmanager
def marked_files(files: dict[str, list[Path]], marker: str) -> Iterator[dict[str, list[Path]]]:
    """The case's files under names that carry ``marker`` (links in a temporary folder).

    The platform names an uploaded image after its file, so the marker identifies the job's
    inputs later (:func:`find_created_job`). Symbolic links cost nothing; where they cannot be
    made the files are copied.
    """
    with tempfile.TemporaryDirectory(prefix="nstage-upload-") as tmp:
        marked: dict[str, list[Path]] = {}
        for socket, paths in files.items():
            folder = Path(tmp) / socket
            folder.mkdir()
            marked[socket] = []
            for path in paths:
                link = folder / f"{MARKER_PREFIX}{marker}-{path.name}"
                try:
                    link.symlink_to(path.resolve())
                except OSError:
                    shutil.copyfile(path, link)
                marked[socket].append(link)
        yield marked


def _socket_slug(value) -> str:
    socket = getattr(value, "socket", None) or getattr(value, "interface", None)
    return getattr(socket, "slug", "") or ""


def find_created_job(client, algorithm, marker: str, known: set[str]) -> tuple[str, object]:
    """Search the platform for a job an interrupted creation may have made.

    Looks at this algorithm's jobs (``algorithm_image__algorithm`` filter) that the ledger
    does not hold for another case; a job is the case's when its ``ct`` input image's name
    carries ``marker``.

    Returns
    -------
    ("found", job) | ("absent", None) | ("unsure", None)
        "unsure": a job's inputs are still being imported (no image yet), so it could be the
        case's; or the platform could not be asked. Look again later.
    """
    import httpx

    unsure = False
    try:
        for job in client.algorithm_jobs.iterate_all(
                params={"algorithm_image__algorithm": algorithm.pk}):
            if job.pk in known:
                continue
            ct = [v for v in job.inputs if _socket_slug(v) == "ct" and v.image]
            if not ct:
                unsure = unsure or job.status not in FAILED_STATUSES | {SUCCEEDED}
                continue
            if marker in client.images.detail(api_url=ct[0].image).name:
                return "found", job
    except httpx.HTTPError:
        return "unsure", None
    return ("unsure" if unsure else "absent"), None


def _seconds_since(stamp: str | None) -> float:
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(str(stamp))).total_seconds()
    except (TypeError, ValueError):
        return float("inf")


# ---------------------------------------------------------------------------
# Downloading a finished job


def _find_output(job, slug_and_path: tuple[str, str]):
    slug, rel = slug_and_path
    for value in job.outputs:
        if value.interface.slug == slug or value.interface.relative_path == rel:
            return value
    return None


def download_job(client, job, out: Path, case_id: str) -> None:
    """Download a succeeded job's n-stage JSON and overlay into ``out/cases/<case_id>``.

    Raises
    ------
    NStageError
        The job has no n-stage output or it is not a valid result.
    """
    json_value = _find_output(job, JSON_OUTPUT)
    if json_value is None:
        raise NStageError(f"job {job.pk} succeeded but has no {JSON_OUTPUT[0]!r} output")
    work = new_work_dir(out, case_id)
    try:
        staging = work / ".download"
        staging.mkdir()
        client.download_socket_value(json_value, output_directory=staging)
        os.replace(staging / json_value.interface.relative_path, work / RESULT_JSON)
        overlay_value = _find_output(job, OVERLAY_OUTPUT)
        if overlay_value is not None:
            client.download_socket_value(overlay_value, output_directory=staging)
            got = sorted((staging / overlay_value.interface.relative_path).glob("*"))
            if len(got) != 1:
                raise NStageError(f"job {job.pk}: expected one overlay image file, got "
                                  f"{len(got)}")
            (work / OVERLAY).parent.mkdir(parents=True, exist_ok=True)
            os.replace(got[0], work / OVERLAY.with_suffix(got[0].suffix or ".mha"))
        shutil.rmtree(staging)
        if read_result(work) is None:
            raise NStageError(f"job {job.pk}: the downloaded {RESULT_JSON} is not a valid "
                              "result (schema)")
        write_json_file(work / "gc-job.json", {"job": job.pk, "url": job.url,
                                               "api_url": job.api_url, "status": job.status})
        commit_case_dir(work, out, case_id)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def record_failure(out: Path, case_id: str, message: str, job: str | None = None) -> None:
    """Write ``cases/<case_id>/error.json`` (replacing an older attempt)."""
    work = new_work_dir(out, case_id)
    write_json_file(work / ERROR_JSON, {"case_id": case_id, "error": message, "job": job})
    commit_case_dir(work, out, case_id)


def platform_error_text(client, job_pk: str, status: str) -> str:
    """The platform's error text for a failed job (falls back to its status and URL)."""
    try:
        raw = client(method="GET", path=f"algorithms/jobs/{job_pk}/")
    except Exception:  # the job's status alone is still worth reporting
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    parts = []
    for key in ("error_message", "detailed_error_message", "rendered_result_text"):
        value = raw.get(key)
        if value:
            parts.append(value if isinstance(value, str) else str(value))
    text = " ".join(" ".join(parts).split())
    where = raw.get("url") or f"job {job_pk}"
    if not text:
        text = "no error text given by the platform"
    return f"Grand Challenge job {status.lower()}: {text} (see {where})"


# ---------------------------------------------------------------------------
# The run


@dataclass
class GCSummary:
    """Counts at the end of one ``nstage gc-run``."""

    total: int
    done: int = 0
    failed: int = 0
    active: int = 0
    not_submitted: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    predictions: Path | None = None


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="nstage gc-run", unit="case",
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def run_on_grand_challenge(
    source: str | Path | list[Case], out: str | Path, algorithm: str, *,
    token_env: str = DEFAULT_TOKEN_ENV, base_url: str | None = None,
    max_active: int = DEFAULT_MAX_ACTIVE, poll_s: float = 10.0, max_poll_s: float = 120.0,
    retry_failed: bool = False, progress: bool = True, deadline_s: float | None = None,
    client=None, sleep: Callable[[float], None] = time.sleep,
) -> GCSummary:
    """Run every case of a cohort as a Grand Challenge algorithm job.

    Parameters
    ----------
    source : path or list of Case
        Folder of case folders in Grand Challenge layout, or CSV ``case_id,ct,pet``.
    out : path
        Output folder: ``cases/<case_id>/``, ``predictions.csv``, ``gc-ledger.json``.
    algorithm : str
        Slug of the algorithm (from its URL).
    token_env : str
        Name of the environment variable holding the API token.
    base_url : str, optional
        API root (default ``$NSTAGE_GC_BASE_URL`` or ``https://grand-challenge.org/api/v1/``).
    max_active : int
        Most jobs queued or running at once.
    poll_s, max_poll_s : float
        First and longest pause (s) between polls; the pause grows by half while
        nothing changes and starts over when something does.
    retry_failed : bool
        Submit cases whose job failed in an earlier run again.
    deadline_s : float, optional
        Stop waiting after this many seconds (jobs keep running on the platform;
        run again to collect them).
    client : gcapi.Client, optional
        Use this client instead of connecting (tests).

    Raises
    ------
    GrandChallengeError
        The token is missing or refused, the algorithm is not found or has no
        ct/pet interface, or the platform cannot be reached.
    OutputError
        The output folder is a file, cannot be written, or another run holds its lock.
    """
    from nstage.io.outputs import check_output_folder

    if max_active < 1:
        raise UsageError(f"--max-active must be 1 or more, got {max_active}")
    out = Path(out)
    check_output_folder(out)
    cases = source if isinstance(source, list) else discover_cases(source)
    Ledger(out / LEDGER, algorithm)  # a ledger of another algorithm: refuse before connecting
    if client is None:
        client = connect(token_env, base_url)
    algorithm_obj = check_algorithm(client, algorithm, token_env)
    out.mkdir(parents=True, exist_ok=True)  # only once the platform accepted us
    with OutputLock(out, "nstage gc-run"):
        ledger = Ledger(out / LEDGER, algorithm)  # as left by the run that held the lock
        return _run_locked(cases, out, algorithm, algorithm_obj, ledger, client,
                           token_env=token_env, max_active=max_active, poll_s=poll_s,
                           max_poll_s=max_poll_s, retry_failed=retry_failed,
                           progress=progress, deadline_s=deadline_s, sleep=sleep)


def _run_locked(cases: list[Case], out: Path, algorithm: str, algorithm_obj, ledger: Ledger,
                client, *, token_env: str, max_active: int, poll_s: float, max_poll_s: float,
                retry_failed: bool, progress: bool, deadline_s: float | None,
                sleep: Callable[[float], None]) -> GCSummary:
    """The body of :func:`run_on_grand_challenge`, with the output folder locked."""
    import httpx
    from gcapi import SocketValueSpec
    from gcapi.exceptions import ObjectNotFound

    ids = [c.case_id for c in cases]
    by_id = {c.case_id: c for c in cases}
    summary = GCSummary(total=len(cases))
    queue: list[str] = []
    active: dict[str, str] = {}  # case_id -> job pk
    for cid in ids:
        entry = ledger.get(cid)
        if is_finished(out, cid):
            summary.done += 1
            if entry.get("state") != S_DONE:
                ledger.update(cid, state=S_DONE)
        elif entry.get("state") in ACTIVE_STATES and entry.get("job"):
            active[cid] = entry["job"]
        elif entry.get("state") == S_FAILED and not retry_failed:
            summary.failed += 1
            summary.errors[cid] = entry.get("error", "failed")
        else:
            queue.append(cid)
    queue.reverse()  # pop() takes cases in the cohort's order
    attempts: dict[str, int] = {}
    bar = _progress(len(cases), summary.done + summary.failed) if progress else None
    t_start = time.monotonic()
    pause = poll_s

    def show() -> None:
        if bar is not None:
            running = sum(ledger.get(c).get("state") == S_RUNNING for c in active)
            bar.set_postfix(queued=len(active) - running + len(queue), running=running,
                            done=summary.done, failed=summary.failed, refresh=False)
            bar.refresh()

    def finish(cid: str, ok: bool, message: str = "") -> None:
        active.pop(cid, None)
        if ok:
            summary.done += 1
            ledger.update(cid, state=S_DONE)
        else:
            summary.failed += 1
            summary.errors[cid] = message
            ledger.update(cid, state=S_FAILED, error=message)
            record_failure(out, cid, message, ledger.get(cid).get("job"))
        if bar is not None:
            bar.update(1)

    def known_jobs() -> set[str]:
        return {str(e["job"]) for e in ledger.cases.values() if e.get("job")}

    def adopt(cid: str, job) -> None:
        active[cid] = job.pk
        ledger.update(cid, state=S_QUEUED, job=job.pk, status=job.status, submitted=_now())

    def look_up(cid: str) -> bool | None:
        """For a case whose job may exist: True when found (adopted), None to wait, False when
        there is none (create it)."""
        entry = ledger.get(cid)
        marker = entry.get("marker")
        if not marker:
            return False  # an older ledger: no marker to look for
        verdict, job = find_created_job(client, algorithm_obj, marker, known_jobs())
        if verdict == "found":
            adopt(cid, job)
            return True
        if verdict == "unsure" and _seconds_since(entry.get("creating_since")) < \
                LOOKUP_PATIENCE_S:
            return None
        return False

    def maybe_created(cid: str, problem: str) -> bool:
        """The creation request failed where the job may exist: look it up next round."""
        attempts[cid] = attempts.get(cid, 0) + 1
        if attempts[cid] < MAX_SUBMIT_ATTEMPTS:
            return False
        found = look_up(cid)
        if found is not False:
            return bool(found)  # adopted, or still cannot tell: wait
        finish(cid, False, problem)
        return True

    def submit(cid: str) -> bool:
        """Upload and start one case; False when it must wait (platform busy, or a job an
        earlier attempt may have created cannot be found yet)."""
        case = by_id[cid]
        if ledger.get(cid).get("state") in MAYBE_CREATED:
            found = look_up(cid)
            if found is not False:
                return bool(found)
        try:
            files = case_inputs(case)
        except NStageError as exc:
            finish(cid, False, exc.one_line())
            return True
        marker = uuid.uuid4().hex[:12]
        ledger.update(cid, state=S_CREATING, job=None, error=None, marker=marker,
                      creating_since=_now())
        try:
            with marked_files(files, marker) as marked:
                job = client.start_algorithm_job(
                    algorithm_slug=algorithm,
                    inputs=[SocketValueSpec(socket_slug=s, files=[str(f) for f in marked[s]])
                            for s in INPUT_SOCKETS])
        except httpx.HTTPStatusError as exc:
            code, text = _http_problem(exc)
            if code in (401, 403):
                raise _auth_error(code, text, token_env) from None
            if (code is not None and code >= 500) or code in (408, 409, 423):
                # the platform may have created the job before the error: look it up
                return maybe_created(cid, f"Grand Challenge refused the job (HTTP {code}: "
                                          f"{text})")
            ledger.update(cid, state=S_PENDING)  # refused outright: no job was created
            if code == 400 and "too many" in text.lower():
                return False  # the user's quota of active jobs is full: wait, however long
            attempts[cid] = attempts.get(cid, 0) + 1
            if code in _RETRY_LATER_CODES and attempts[cid] < MAX_SUBMIT_ATTEMPTS:
                return False
            finish(cid, False, f"Grand Challenge refused the job (HTTP {code}: {text})")
            return True
        except httpx.HTTPError as exc:  # reset, timeout: the job may or may not exist
            return maybe_created(cid, f"cannot reach Grand Challenge: {type(exc).__name__}")
        except (ValueError, OSError) as exc:
            ledger.update(cid, state=S_PENDING)
            finish(cid, False, f"cannot submit the case: {' '.join(str(exc).split())}")
            return True
        adopt(cid, job)
        return True

    def poll(cid: str) -> bool:
        """Check one job; True when its state changed."""
        pk = active[cid]
        try:
            job = client.algorithm_jobs.detail(pk=pk)
        except httpx.HTTPStatusError as exc:
            code, text = _http_problem(exc)
            if code in (401, 403):
                raise _auth_error(code, text, token_env) from None
            if code == 404:
                finish(cid, False, f"Grand Challenge job {pk} no longer exists (HTTP 404)")
                return True
            return False  # rate limit or platform hiccup: ask again later
        except httpx.HTTPError:
            return False
        except ObjectNotFound:
            finish(cid, False, f"Grand Challenge job {pk} not found")
            return True
        previous = ledger.get(cid).get("status")
        if job.status == SUCCEEDED:
            try:
                download_job(client, job, out, cid)
            except NStageError as exc:
                finish(cid, False, exc.one_line())
                return True
            except httpx.HTTPError as exc:
                code, text = _http_problem(exc)
                if code in (401, 403):
                    raise _auth_error(code, text, token_env) from None
                return False  # try the download again on the next round
            ledger.update(cid, status=job.status)
            finish(cid, True)
            return True
        if job.status in FAILED_STATUSES:
            ledger.update(cid, status=job.status)
            finish(cid, False, platform_error_text(client, pk, job.status))
            return True
        state = S_QUEUED if job.status in QUEUED_STATUSES else S_RUNNING
        if job.status != previous:
            ledger.update(cid, state=state, status=job.status)
            return True
        return False

    try:
        show()
        while queue or active:
            changed = False
            blocked = False
            while queue and len(active) < max_active and not blocked:
                cid = queue.pop()
                if submit(cid):
                    changed = True
                else:
                    queue.append(cid)
                    blocked = True
            for cid in list(active):
                changed = poll(cid) or changed
            show()
            if not (queue or active):
                break
            if deadline_s is not None and time.monotonic() - t_start > deadline_s:
                break
            pause = poll_s if changed else min(max_poll_s, pause * 1.5)
            sleep(pause)
    finally:
        if bar is not None:
            bar.close()
        summary.active = len(active)
        summary.not_submitted = len(queue)
        pending = {cid: (ledger.get(cid).get("state", "pending"), "") for cid in ids}
        for cid in ids:
            if cid in summary.errors:
                pending[cid] = (STATUS_ERROR, summary.errors[cid])
        summary.predictions = write_predictions(out, ids, pending)
    return summary
