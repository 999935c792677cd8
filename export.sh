#!/usr/bin/env bash
# Save the built image for upload to Grand Challenge, and pack model/ as model.tar.gz.
# Usage: ./export.sh [TAG]   (default tag: nstage)
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TAG="${1:-nstage}"
OUT_DIR="${SCRIPT_DIR}/export"
mkdir -p "${OUT_DIR}"
echo "Saving image ${TAG} to ${OUT_DIR}/${TAG}.tar.gz ..."
docker save "${TAG}" | gzip -c > "${OUT_DIR}/${TAG}.tar.gz.partial"
mv "${OUT_DIR}/${TAG}.tar.gz.partial" "${OUT_DIR}/${TAG}.tar.gz"
echo "Packing model/ to ${OUT_DIR}/model.tar.gz ..."
tar -czf "${OUT_DIR}/model.tar.gz.partial" -C "${SCRIPT_DIR}/model" .
mv "${OUT_DIR}/model.tar.gz.partial" "${OUT_DIR}/model.tar.gz"
ls -lh "${OUT_DIR}"
