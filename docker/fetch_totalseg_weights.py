"""Fetch the TotalSegmentator weights nstage uses, at image BUILD time, and verify them.

Runs inside ``docker build`` only (never at run time). Downloads the model folders
of TotalSegmentator's ``total`` task (1.5 mm parts 291-295 and the 3 mm model 297)
with TotalSegmentator's own downloader into ``--weights``, then checks the SHA-256 of
every file against ``--manifest`` (lines ``<sha256>  <relative path>``).

TotalSegmentator publishes no checksums, so the manifest is recorded once on a
trusted machine: ``RECORD_CHECKSUMS=1 ./build.sh`` prints the lines to commit into
``model/totalseg-weights.sha256``. With ``--record 0`` (the default) a file missing
from the manifest, or a mismatch, fails the build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

TASK_IDS = (291, 292, 293, 294, 295, 297)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, rel = line.split(maxsplit=1)
        entries[rel.strip()] = digest
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--record", default="0", help="1: print checksums instead of verifying")
    args = parser.parse_args()

    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(args.weights)
    home = Path("/tmp/totalseg-build-home")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    (home / "config.json").write_text(json.dumps(
        {"totalseg_id": "nstage-build", "send_usage_stats": False, "prediction_counter": 0}))

    from totalsegmentator.libs import download_pretrained_weights

    args.weights.mkdir(parents=True, exist_ok=True)
    for task_id in TASK_IDS:
        download_pretrained_weights(task_id)

    files = sorted(p for p in args.weights.rglob("*") if p.is_file())
    actual = {str(p.relative_to(args.weights)): sha256(p) for p in files}
    if args.record == "1":
        print("# TotalSegmentator weights, recorded by docker/fetch_totalseg_weights.py")
        for rel, digest in actual.items():
            print(f"{digest}  {rel}")
        return 0

    expected = read_manifest(args.manifest)
    problems = [f"not in manifest: {rel}" for rel in actual if rel not in expected]
    problems += [f"missing: {rel}" for rel in expected if rel not in actual]
    problems += [f"checksum mismatch: {rel}" for rel in actual
                 if rel in expected and expected[rel] != actual[rel]]
    if problems:
        print("TotalSegmentator weights failed verification against "
              f"{args.manifest.name}:", file=sys.stderr)
        for p in problems[:20]:
            print(f"  {p}", file=sys.stderr)
        print("Record the manifest once on a trusted machine with RECORD_CHECKSUMS=1 ./build.sh "
              "and commit it to model/totalseg-weights.sha256.", file=sys.stderr)
        return 1
    print(f"verified {len(actual)} weight files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
