#!/usr/bin/env bash
# Regenerate test/input (a small phantom case in Grand Challenge layout) and
# test/expected_output (what inference.py writes for it with the embedded defaults).
# Run from an environment where nstage is installed: test/make_test_case.sh
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "${SCRIPT_DIR}")"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

nstage phantom "${WORK}/case" --nodes 4R,7 --primary-side right --primary-lobe upper --seed 3
rm -rf "${SCRIPT_DIR}/input" "${SCRIPT_DIR}/expected_output"
cp -r "${WORK}/case/input" "${SCRIPT_DIR}/input"
cp "${WORK}/case/truth.json" "${SCRIPT_DIR}/truth.json"
python "${ROOT_DIR}/inference.py" --input "${SCRIPT_DIR}/input" \
    --output "${SCRIPT_DIR}/expected_output" --anatomy classical --lesions suv --no-report
echo "wrote ${SCRIPT_DIR}/input and ${SCRIPT_DIR}/expected_output"
