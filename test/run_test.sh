#!/usr/bin/env bash
# Run the built image the way Grand Challenge does and compare with test/expected_output.
# Usage: test/run_test.sh [TAG]   (default tag: nstage; build it first with ./build.sh)
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "${SCRIPT_DIR}")"
TAG="${1:-nstage}"
MEMORY_LIMIT="${MEMORY_LIMIT:-8g}"
# test/expected_output was made with the embedded defaults; set both to "auto" to run
# exactly what Grand Challenge runs (then TotalSegmentator's anatomy may differ slightly).
NSTAGE_ANATOMY="${NSTAGE_ANATOMY:-classical}"
NSTAGE_LESIONS="${NSTAGE_LESIONS:-suv}"

OUTPUT_DIR="$(mktemp -d)"
chmod 777 "${OUTPUT_DIR}"
cleanup() { rm -rf "${OUTPUT_DIR}"; }
trap cleanup EXIT

GPU_ARGS=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    GPU_ARGS=(--gpus all)
fi

docker run --rm \
    --platform=linux/amd64 \
    --network none \
    "${GPU_ARGS[@]}" \
    --memory "${MEMORY_LIMIT}" --memory-swap "${MEMORY_LIMIT}" \
    --shm-size 128m \
    --env "NSTAGE_ANATOMY=${NSTAGE_ANATOMY}" \
    --env "NSTAGE_LESIONS=${NSTAGE_LESIONS}" \
    --volume "${SCRIPT_DIR}/input:/input:ro" \
    --volume "${OUTPUT_DIR}:/output" \
    --volume "${ROOT_DIR}/model:/opt/ml/model:ro" \
    "${TAG}"

python3 "${SCRIPT_DIR}/compare_outputs.py" "${SCRIPT_DIR}/expected_output" "${OUTPUT_DIR}"
