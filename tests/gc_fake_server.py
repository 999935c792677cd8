"""A tiny stand-in for the grand-challenge.org REST API, on 127.0.0.1 over HTTPS.

It implements only what ``gcapi`` calls for ``start_algorithm_job``,
``algorithm_jobs.detail`` and ``download_socket_value`` (paths and fields read
from gcapi's client.py, create_strategies.py and models.py):

- ``GET  gcapi/`` (version check, no token)
- ``GET  algorithms/?slug=`` and ``GET components/interfaces/?slug=``
- ``POST uploads/``, ``PATCH uploads/<pk>/<s3>/generate-presigned-urls/``,
  ``PUT  <presigned url>``, ``PATCH uploads/<pk>/<s3>/complete-multipart-upload/``
- ``POST algorithms/jobs/``, ``GET algorithms/jobs/<pk>/``
- ``GET  algorithms/jobs/?algorithm_image__algorithm=<pk>`` (the job list, paginated by
  ``offset``/``limit``, newest first), each job with its ``ct``/``pet`` input images
- ``GET  cases/images/<pk>/`` (input images are named after the uploaded file, as the
  platform does) and the output image file itself

The "algorithm" reads the uploaded CT bytes: ``N2 4R,7`` gives that result,
``fail`` a failed job with an error message. Jobs advance one status per poll.
Everything the server saw is recorded for the tests to inspect.

Faults after a job was created (the job exists, the client never hears of it):
``reset_after_create`` resets the connection instead of answering, ``error_after_create``
answers 502; each counts down once per job creation. ``inputs_pending`` hides new jobs'
input images from the job list (as while the platform still imports them).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from batch_helpers import fake_result

API = "/api/v1/"
ALGORITHM_SLUG = "nstage-test"
_MARKER = re.compile(r"^nstage-[0-9a-f]{12}-")


def case_file_name(uploaded: str) -> str:
    """The case's own file name: without the marker gc-run puts in front of it."""
    return _MARKER.sub("", uploaded)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl); returns (cert, key)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _socket(pk: int, slug: str, kind: str, super_kind: str, rel: str) -> dict:
    return {"title": slug, "description": None, "slug": slug, "kind": kind, "pk": pk,
            "default_value": None, "super_kind": super_kind, "relative_path": rel,
            "overlay_segments": None, "look_up_table": None}


SOCKETS = {
    "ct": _socket(1, "ct", "Image", "Image", "images/ct"),
    "pet": _socket(2, "pet", "Image", "Image", "images/pet"),
    "n-stage": _socket(3, "n-stage", "Anything", "Value", "n-stage.json"),
    "n-staging-segmentation": _socket(4, "n-staging-segmentation", "Segmentation", "Image",
                                      "images/n-staging-segmentation"),
}


class FakeGrandChallenge:
    """State and behaviour of the fake platform; ``start()`` returns the API base URL."""

    def __init__(self, token: str, cert: Path, key: str | Path, *, steps_to_finish: int = 2,
                 rate_limit: dict[str, int] | None = None, retry_after: str = "1"):
        self.token = token
        self.cert, self.key = cert, key
        self.steps_to_finish = steps_to_finish
        # how many 429 answers each kind of request gets before it succeeds
        self.rate_limit = dict(rate_limit or {})
        self.retry_after = retry_after
        self.hold = threading.Event()  # while set, jobs stay "Executing"
        self.lock = threading.Lock()
        self.uploads: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.images: dict[str, bytes] = {}
        self.input_images: dict[str, str] = {}  # image pk -> name (the uploaded file's)
        self.reset_after_create = 0
        self.error_after_create = 0
        self.inputs_pending = threading.Event()  # while set, new jobs list no input images
        self.job_counter = 0
        self.log: list[tuple[float, str, str, int]] = []  # (time, method, path, status)
        self.auth_headers: list[str] = []
        self.max_active_seen = 0
        self.server: ThreadingHTTPServer | None = None

    # -- helpers for tests
    def uploads_per_file(self) -> dict[str, int]:
        """Uploads per case file (the marker gc-run adds to the name left out)."""
        counts: dict[str, int] = {}
        for up in self.uploads.values():
            name = case_file_name(up["filename"])
            counts[name] = counts.get(name, 0) + 1
        return counts

    def jobs_per_ct(self) -> dict[str, int]:
        """Jobs per case CT file (the marker gc-run adds to the name left out)."""
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            name = case_file_name(job["ct_name"])
            counts[name] = counts.get(name, 0) + 1
        return counts

    def release_inputs(self) -> None:
        """Show every job's input images (their import has finished)."""
        self.inputs_pending.clear()
        with self.lock:
            for job in self.jobs.values():
                job["inputs_pending"] = False

    def active_jobs(self) -> int:
        return sum(j["status"] not in ("Succeeded", "Failed") for j in self.jobs.values())

    # -- server
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def finish(self):
                try:
                    super().finish()
                except OSError:  # the connection was reset on purpose
                    pass

            def do_GET(self):
                fake.handle(self, "GET")

            def do_POST(self):
                fake.handle(self, "POST")

            def do_PATCH(self):
                fake.handle(self, "PATCH")

            def do_PUT(self):
                fake.handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.base_url

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.origin + API

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- request handling
    def handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        import time

        url = urlparse(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        status, payload, headers = self.route(req, method, url, body)
        with self.lock:
            self.log.append((time.monotonic(), method, url.path, status))
        if status == "reset":
            self.reset(req)
            return
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)

    @staticmethod
    def reset(req: BaseHTTPRequestHandler) -> None:
        """Drop the connection with a TCP reset, without an answer."""
        req.close_connection = True
        conn = req.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        except OSError:
            pass

    def _fault_after_create(self) -> str | None:
        with self.lock:
            if self.reset_after_create > 0:
                self.reset_after_create -= 1
                return "reset"
            if self.error_after_create > 0:
                self.error_after_create -= 1
                return "error"
        return None

    def _limited(self, kind: str) -> bool:
        with self.lock:
            if self.rate_limit.get(kind, 0) > 0:
                self.rate_limit[kind] -= 1
                return True
        return False

    def route(self, req, method, url, body):
        path = url.path
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if path.startswith("/s3/") and method == "PUT":
            _, _, pk, part = path.split("/")
            with self.lock:
                self.uploads[pk]["parts"][part] = body
            return 200, b"", {"ETag": f'"etag-{pk}-{part}"'}
        if path.startswith("/media/") and method == "GET":
            return 200, self.images[path.split("/")[2]], {}
        if not path.startswith(API):
            return 404, {"detail": "Not found."}, {}
        rest = path[len(API):]
        if rest == "gcapi/":
            return 200, {"latest_version": "0.0.1", "lowest_supported_version": "0.0.1"}, {}
        auth = req.headers.get("Authorization", "")
        with self.lock:
            self.auth_headers.append(auth)
        if auth != f"BEARER {self.token}":
            return 401, {"detail": "Invalid token."}, {}
        parts = [p for p in rest.split("/") if p]

        if parts == ["algorithms"] and method == "GET":
            found = [self.algorithm()] if query.get("slug") == ALGORITHM_SLUG else []
            return 200, self.page(found), {}
        if parts == ["components", "interfaces"] and method == "GET":
            found = [SOCKETS[query["slug"]]] if query.get("slug") in SOCKETS else []
            return 200, self.page(found), {}
        if parts == ["uploads"] and method == "POST":
            pk = str(uuid.uuid4())
            up = {"pk": pk, "created": "2026-01-01T00:00:00Z",
                  "filename": json.loads(body)["filename"], "key": f"k/{pk}",
                  "s3_upload_id": f"s3-{pk[:8]}", "status": "Initialized",
                  "api_url": f"{self.base_url}uploads/{pk}/", "parts": {}}
            with self.lock:
                self.uploads[pk] = up
            return 201, self.public_upload(up), {}
        if len(parts) == 4 and parts[0] == "uploads" and method == "PATCH":
            up = self.uploads[parts[1]]
            if parts[3] == "generate-presigned-urls":
                numbers = json.loads(body)["part_numbers"]
                urls = {str(n): f"{self.origin}/s3/{up['pk']}/{n}" for n in numbers}
                return 200, {**self.public_upload(up), "presigned_urls": urls}, {}
            if parts[3] == "complete-multipart-upload":
                up["status"] = "Completed"
                return 200, self.public_upload(up), {}
        if parts == ["algorithms", "jobs"] and method == "POST":
            if self._limited("job_create"):
                return 429, {"detail": "Request was throttled."}, {"Retry-After": self.retry_after}
            created = self.create_job(json.loads(body))
            fault = self._fault_after_create()
            if fault == "reset":
                return "reset", None, {}
            if fault == "error":
                return 502, {"detail": "Bad gateway."}, {}
            return 201, created, {}
        if parts == ["algorithms", "jobs"] and method == "GET":
            return 200, self.job_list(query), {}
        if len(parts) == 3 and parts[:2] == ["algorithms", "jobs"] and method == "GET":
            if self._limited("job_detail"):
                return 429, {"detail": "Request was throttled."}, {"Retry-After": self.retry_after}
            job = self.jobs.get(parts[2])
            if job is None:
                return 404, {"detail": "Not found."}, {}
            self.advance(job)
            return 200, self.public_job(job), {}
        if len(parts) == 3 and parts[:2] == ["cases", "images"] and method == "GET":
            pk = parts[2]
            if pk in self.input_images:
                return 200, self.image_detail(pk, self.input_images[pk]), {}
            return 200, self.image_detail(pk), {}
        return 404, {"detail": f"no fake endpoint for {method} {path}"}, {}

    # -- platform objects
    @staticmethod
    def page(results: list) -> dict:
        return {"count": len(results), "next": None, "previous": None, "results": results}

    @staticmethod
    def public_upload(up: dict) -> dict:
        return {k: up[k] for k in ("pk", "created", "filename", "key", "s3_upload_id",
                                   "status", "api_url")}

    def algorithm(self) -> dict:
        return {"api_url": f"{self.base_url}algorithms/alg-1/", "url": f"{self.origin}/a/",
                "description": None, "pk": "alg-1", "title": "nstage", "logo": "",
                "slug": ALGORITHM_SLUG, "average_duration": None,
                "interfaces": [{"inputs": [SOCKETS["ct"], SOCKETS["pet"]],
                                "outputs": [SOCKETS["n-stage"],
                                            SOCKETS["n-staging-segmentation"]]}]}

    def create_job(self, data: dict) -> dict:
        pk = str(uuid.uuid4())
        by_socket = {}
        for value in data["inputs"]:
            ups = [self.uploads[u.rstrip("/").split("/")[-1]] for u in value["user_uploads"]]
            assert all(u["status"] == "Completed" for u in ups)
            by_socket[value["interface"]] = ups[0]
        assert set(by_socket) == {"ct", "pet"}, by_socket
        ct = by_socket["ct"]
        spec = b"".join(ct["parts"][k] for k in sorted(ct["parts"], key=int)).decode()
        images = {slug: str(uuid.uuid4()) for slug in by_socket}
        job = {"pk": pk, "status": "Queued", "steps": 0, "spec": spec,
               "ct_name": ct["filename"], "inputs": data["inputs"], "images": images,
               "inputs_pending": self.inputs_pending.is_set()}
        with self.lock:
            self.job_counter += 1
            job["number"] = self.job_counter
            for slug, image_pk in images.items():
                self.input_images[image_pk] = by_socket[slug]["filename"]
            self.jobs[pk] = job
            self.max_active_seen = max(self.max_active_seen, self.active_jobs())
        return {"pk": pk, "status": "Queued",
                "inputs": [{"interface": v["interface"], "value": None, "file": None,
                            "image": None, "pk": i, "image_name": None}
                           for i, v in enumerate(data["inputs"])]}

    def advance(self, job: dict) -> None:
        with self.lock:
            if job["status"] in ("Succeeded", "Failed"):
                return
            job["steps"] += 1
            if job["steps"] >= self.steps_to_finish and not self.hold.is_set():
                if job["spec"].split()[0] == "fail":
                    job["status"] = "Failed"
                    job["error_message"] = "Time limit exceeded"
                else:
                    job["status"] = "Succeeded"
                    self.images[job["pk"]] = (b"overlay-of-"
                                              + case_file_name(job["ct_name"]).encode())
            else:
                job["status"] = "Executing"

    def public_job(self, job: dict) -> dict:
        outputs = []
        if job["status"] == "Succeeded":
            words = job["spec"].split()
            stations = words[1].split(",") if len(words) > 1 else []
            outputs = [
                {"socket": SOCKETS["n-stage"], "interface": SOCKETS["n-stage"],
                 "value": fake_result(words[0], stations), "file": None, "image": None,
                 "pk": 10},
                {"socket": SOCKETS["n-staging-segmentation"],
                 "interface": SOCKETS["n-staging-segmentation"], "value": None, "file": None,
                 "image": f"{self.base_url}cases/images/{job['pk']}/", "pk": 11},
            ]
        inputs = [] if job["inputs_pending"] else [
            {"socket": SOCKETS[slug], "interface": SOCKETS[slug], "value": None, "file": None,
             "image": f"{self.base_url}cases/images/{image_pk}/", "pk": 20 + i}
            for i, (slug, image_pk) in enumerate(sorted(job["images"].items()))]
        out = {"pk": job["pk"], "url": f"{self.origin}/jobs/{job['pk']}/",
               "api_url": f"{self.base_url}algorithms/jobs/{job['pk']}/",
               "algorithm_image": f"{self.base_url}algorithms/images/img-1/",
               "inputs": inputs, "outputs": outputs, "status": job["status"],
               "rendered_result_text": "", "started_at": None, "completed_at": None,
               "hanging_protocol": None, "optional_hanging_protocols": [],
               "view_content": {}, "exec_duration": None, "invoke_duration": None,
               "algorithm": f"{self.base_url}algorithms/alg-1/"}
        if "error_message" in job:
            out["error_message"] = job["error_message"]
        return out

    def job_list(self, query: dict[str, str]) -> dict:
        """The user's jobs of the algorithm, newest first (filter as the platform's)."""
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: -j["number"])
        if query.get("algorithm_image__algorithm") not in (None, "alg-1"):
            jobs = []
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 100))
        page = [self.public_job(j) for j in jobs[offset:offset + limit]]
        return {"count": len(jobs), "next": None, "previous": None, "results": page}

    def image_detail(self, pk: str, name: str = "output.mha") -> dict:
        return {"pk": pk, "name": name,
                "files": [{"pk": f"f-{pk}", "image": f"{self.base_url}cases/images/{pk}/",
                           "file": f"{self.origin}/media/{pk}/output.mha", "image_type": "MHD"}],
                "dicom_image_set": None, "width": 4, "height": 4, "depth": 4,
                "color_space": None, "modality": None, "eye_choice": None,
                "stereoscopic_choice": None, "field_of_view": None,
                "shape_without_color": [4, 4, 4], "shape": [4, 4, 4],
                "voxel_width_mm": 1.0, "voxel_height_mm": 1.0, "voxel_depth_mm": 1.0,
                "api_url": f"{self.base_url}cases/images/{pk}/", "window_center": None,
                "window_width": None, "segments": None}
