"""Anatomy backends: TotalSegmentator, the classical CT-only default, and a precomputed
TotalSegmentator result merged with one of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from nstage.anatomy.base import GROUPS, Anatomy

__all__ = ["BACKENDS", "GROUPS", "Anatomy", "segment"]

BACKENDS = ("auto", "classical", "totalsegmentator")


def segment(ct: sitk.Image, backend: str = "auto", fast: bool = False,
            device: str = "auto", precomputed: Sequence[str | Path] | None = None,
            precomputed_task: str | None = None) -> Anatomy:
    """Segment the staging anatomy of a (thorax-cropped, canonical) CT.

    Parameters
    ----------
    ct : SimpleITK.Image
        CT in HU.
    backend : {"auto", "classical", "totalsegmentator"}
        ``auto`` uses TotalSegmentator when its weights for the chosen model are present,
        else the classical CT-only backend.
    fast : bool
        TotalSegmentator's 3 mm model.
    device : {"auto", "cpu", "cuda"}
        Where TotalSegmentator runs (ignored by the classical backend).
    precomputed : sequence of path, optional
        Existing TotalSegmentator results (mask folders or multilabel files, see
        :mod:`nstage.anatomy.precomputed`); their classes win, ``backend`` fills what they lack
        (``auto`` then means classical: nothing is run twice).
    precomputed_task : str, optional
        TotalSegmentator task naming a multilabel file without a label table in its header.

    Returns
    -------
    Anatomy
        Labels on ``ct``'s canonical grid.
    """
    from nstage.errors import UsageError

    if backend not in BACKENDS:
        raise UsageError(f"unknown anatomy backend {backend!r}",
                         hint="use one of " + ", ".join(BACKENDS))
    given = None
    if precomputed:
        # Read first: a bad segmentation fails before any backend runs.
        from nstage.anatomy.precomputed import load_precomputed, merge
        from nstage.geometry import canonical

        given = load_precomputed(precomputed, canonical(ct), task=precomputed_task)
        if backend == "auto":
            backend = "classical"
    anatomy = _run_backend(ct, backend, fast, device)
    return anatomy if given is None else merge(given, anatomy)


def _run_backend(ct: sitk.Image, backend: str, fast: bool, device: str) -> Anatomy:
    if backend == "auto":
        # Imported lazily: the weights check needs no torch, the classical core none at all.
        from nstage.anatomy.totalseg import totalseg_weights_available

        backend = "totalsegmentator" if totalseg_weights_available(fast) else "classical"
    if backend == "totalsegmentator":
        from nstage.anatomy.totalseg import segment_totalseg

        return segment_totalseg(ct, fast=fast, device=device)
    from nstage.anatomy.classical import segment_classical

    return segment_classical(ct)
