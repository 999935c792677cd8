"""Anatomy backends: TotalSegmentator and the classical CT-only default."""

from __future__ import annotations

import SimpleITK as sitk

from nstage.anatomy.base import GROUPS, Anatomy

__all__ = ["BACKENDS", "GROUPS", "Anatomy", "segment"]

BACKENDS = ("auto", "classical", "totalsegmentator")


def segment(ct: sitk.Image, backend: str = "auto", fast: bool = False,
            device: str = "auto") -> Anatomy:
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

    Returns
    -------
    Anatomy
        Labels on ``ct``'s canonical grid.
    """
    from nstage.errors import UsageError

    if backend not in BACKENDS:
        raise UsageError(f"unknown anatomy backend {backend!r}",
                         hint="use one of " + ", ".join(BACKENDS))
    if backend == "auto":
        # Imported lazily: the weights check needs no torch, the classical core none at all.
        from nstage.anatomy.totalseg import totalseg_weights_available

        backend = "totalsegmentator" if totalseg_weights_available(fast) else "classical"
    if backend == "totalsegmentator":
        from nstage.anatomy.totalseg import segment_totalseg

        return segment_totalseg(ct, fast=fast, device=device)
    from nstage.anatomy.classical import segment_classical

    return segment_classical(ct)
