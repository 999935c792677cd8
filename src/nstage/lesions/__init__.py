"""Lesion backends: nnU-Net v2 and the SUV-threshold default."""

from nstage.lesions.base import LesionMask

__all__ = ["LesionMask"]
