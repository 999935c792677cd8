"""Anatomy backends: TotalSegmentator and the classical CT-only default."""

from nstage.anatomy.base import GROUPS, Anatomy

__all__ = ["GROUPS", "Anatomy"]
