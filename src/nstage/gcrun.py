"""Run a cohort on Grand Challenge: one algorithm job per case, through ``gcapi``.

Grand Challenge is the scheduler: this module only keeps at most ``max_active``
jobs in flight, polls them with back-off, and downloads each finished job's
``n-stage`` JSON and overlay into the same layout as ``nstage batch``
(``DIR/cases/<case_id>/``, ``DIR/predictions.csv``), so ``nstage evaluate``
works unchanged.

Resuming: ``DIR/gc-ledger.json`` records, per case, the job id and its last
known state, rewritten atomically after every change. A restart polls the jobs
in the ledger instead of uploading their cases again, skips downloaded cases,
and reports failed jobs (``retry_failed`` submits those again). A case whose
upload was interrupted before the platform returned a job id has no job and is
submitted again.

The API token is read from an environment variable only and is never printed,
logged or written anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nstage.batch import (
    ERROR_JSON,
    OVERLAY,
    RESULT_JSON,
    STATUS_ERROR,
    Case,
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

# Ledger states
S_SUBMITTING, S_QUEUED, S_RUNNING = "submitting", "queued", "running"
S_DONE, S_FAILED = "done", "failed"
ACTIVE_STATES = {S_QUEUED, S_RUNNING}

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
        return gcapi.Client(token=token, base_url=base_url)
    except UnsupportedVersionError as exc:
        raise GrandChallengeError(f"{exc}", hint="pip install --upgrade gcapi") from None
    except httpx.HTTPError as exc:
        raise GrandChallengeError(f"cannot reach Grand Challenge at {base_url}: "
                                  f"{type(exc).__name__}",
                                  hint="check the network and the base URL") from None
    except RuntimeError as exc:
        # gcapi: "Base URL must be https", "Invalid token format"; never contains the token.
        raise GrandChallengeError(f"{exc}", hint=f"check {token_env} and the base URL") from None


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
    """
    import httpx
    from gcapi import SocketValueSpec
    from gcapi.exceptions import ObjectNotFound

    if max_active < 1:
        raise UsageError(f"--max-active must be 1 or more, got {max_active}")
    cases = source if isinstance(source, list) else discover_cases(source)
    out = Path(out)
    ledger = Ledger(out / LEDGER, algorithm)
    if client is None:
        client = connect(token_env, base_url)
    check_algorithm(client, algorithm, token_env)
    out.mkdir(parents=True, exist_ok=True)  # only once the platform accepted us

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

    def submit(cid: str) -> bool:
        """Upload and start one case; False when the platform asks to wait."""
        case = by_id[cid]
        try:
            files = case_inputs(case)
        except NStageError as exc:
            finish(cid, False, exc.one_line())
            return True
        ledger.update(cid, state=S_SUBMITTING, job=None, error=None)
        try:
            job = client.start_algorithm_job(
                algorithm_slug=algorithm,
                inputs=[SocketValueSpec(socket_slug=s, files=[str(f) for f in files[s]])
                        for s in INPUT_SOCKETS])
        except httpx.HTTPStatusError as exc:
            code, text = _http_problem(exc)
            if code in (401, 403):
                raise _auth_error(code, text, token_env) from None
            if code == 400 and "too many" in text.lower():
                return False  # the user's quota of active jobs is full: wait, however long
            attempts[cid] = attempts.get(cid, 0) + 1
            if code in _RETRY_LATER_CODES and attempts[cid] < MAX_SUBMIT_ATTEMPTS:
                return False
            finish(cid, False, f"Grand Challenge refused the job (HTTP {code}: {text})")
            return True
        except httpx.HTTPError as exc:
            attempts[cid] = attempts.get(cid, 0) + 1
            if attempts[cid] < MAX_SUBMIT_ATTEMPTS:
                return False
            finish(cid, False, f"cannot reach Grand Challenge: {type(exc).__name__}")
            return True
        except (ValueError, OSError) as exc:
            finish(cid, False, f"cannot submit the case: {' '.join(str(exc).split())}")
            return True
        active[cid] = job.pk
        ledger.update(cid, state=S_QUEUED, job=job.pk, status=job.status,
                      submitted=_now())
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
