#!/usr/bin/env bash
# Build the Grand Challenge container image (linux/amd64).
# Usage: ./build.sh [TAG]          (default tag: nstage)
#        RECORD_CHECKSUMS=1 ./build.sh   first build on a trusted machine: prints the
#        TotalSegmentator weight checksums to commit into model/totalseg-weights.sha256
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TAG="${1:-nstage}"
docker build --platform=linux/amd64 \
    --build-arg "RECORD_CHECKSUMS=${RECORD_CHECKSUMS:-0}" \
    --tag "${TAG}" "${SCRIPT_DIR}"
