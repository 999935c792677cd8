"""What a phantom should contain (:class:`PhantomSpec`) and what comes out (:class:`Phantom`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import SimpleITK as sitk

from nstage.errors import UsageError

#: Confounders a phantom can carry (none of them counts for N).
CONFOUNDERS: tuple[str, ...] = (
    "hot-myocardium",      # myocardium SUV 6-10 next to stations 7/8
    "brown-fat",           # FDG-avid supraclavicular and paravertebral fat (fat HU)
    "hilar-symmetric",     # symmetric mildly avid 10R/10L nodes below the positivity threshold
    "distant-lesion",      # FDG-avid bone (thorax) or adrenal (whole body) lesion, possible M1
    "subthreshold-node",   # a small node below the positivity threshold
)
SIDES = ("left", "right", "none")
LOBES = ("upper", "middle", "lower")
EXTENTS = ("thorax", "whole-body")


@dataclass(frozen=True)
class PhantomSpec:
    """Requested content of a digital PET/CT phantom.

    Attributes
    ----------
    nodes : tuple of str
        IASLC station of each FDG-avid metastatic node (one node per entry; case-insensitive,
        e.g. ``("4R", "7")``).
    primary_side : {"left", "right", "none"}
        Lung (patient side) holding the primary tumour, or no primary.
    primary_lobe : {"upper", "middle", "lower"}
        Lobe of the primary ("middle" only on the right).
    extent : {"thorax", "whole-body"}
        Thorax (neck to upper abdomen, 1.5 x 1.5 x 3 mm) or a clinical-size whole-body study.
    seed : int
        Seed of every random choice (node positions and sizes, SUVs, noise).
    confounders : frozenset of str
        Any of :data:`CONFOUNDERS`.
    """

    nodes: tuple[str, ...] = ()
    primary_side: Literal["left", "right", "none"] = "right"
    primary_lobe: Literal["upper", "middle", "lower"] = "upper"
    extent: Literal["thorax", "whole-body"] = "thorax"
    seed: int = 0
    confounders: frozenset[str] = frozenset()

    def validated(self) -> PhantomSpec:
        """A copy with canonical station codes; raises :class:`UsageError` on bad values."""
        from nstage.staging import normalize_station

        nodes = tuple(normalize_station(s) for s in self.nodes)
        if self.primary_side not in SIDES:
            raise UsageError(f"unknown primary side {self.primary_side!r}",
                             hint="use left, right or none")
        if self.primary_lobe not in LOBES:
            raise UsageError(f"unknown primary lobe {self.primary_lobe!r}",
                             hint="use upper, middle or lower")
        if self.primary_side == "left" and self.primary_lobe == "middle":
            raise UsageError("the left lung has no middle lobe",
                             hint="use --primary-lobe upper or lower for a left primary")
        if self.extent not in EXTENTS:
            raise UsageError(f"unknown extent {self.extent!r}", hint="use thorax or whole-body")
        bad = sorted(set(self.confounders) - set(CONFOUNDERS))
        if bad:
            raise UsageError(f"unknown confounder {bad[0]!r}",
                             hint=f"valid confounders: {', '.join(CONFOUNDERS)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed must be a non-negative integer, not {self.seed!r}")
        return PhantomSpec(nodes, self.primary_side, self.primary_lobe, self.extent,
                           int(self.seed), frozenset(self.confounders))


@dataclass
class Phantom:
    """A generated phantom study, in memory.

    Attributes
    ----------
    spec : PhantomSpec
    ct : SimpleITK.Image
        int16 HU, canonical LPS orientation (identity direction).
    pet : SimpleITK.Image
        float32 SUV body weight on its own, coarser grid (different origin and size).
    anatomy : nstage.anatomy.Anatomy
        Ground-truth anatomy on the CT grid, TotalSegmentator class names,
        ``backend="phantom-truth"``; ``extra_masks["body"]`` is the body outline.
    truth : dict
        What ``truth.json`` holds (see :func:`nstage.phantom.make_phantom`).
    lesion_labels : numpy.ndarray
        uint8 map on the CT grid: 0 background, 1 primary, k+2 for node k of
        ``truth["nodes"]``, then confounder lesions (``truth["confounders"][i]["label_value"]``).
    timings_s : dict of str to float
    """

    spec: PhantomSpec
    ct: sitk.Image
    pet: sitk.Image
    anatomy: object
    truth: dict
    lesion_labels: object = None
    timings_s: dict[str, float] = field(default_factory=dict)
