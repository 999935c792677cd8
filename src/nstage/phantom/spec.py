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
#: Physiological uptake of a real FDG PET (``nstage phantom --confounders``); none counts for N.
PHYSIOLOGY: tuple[str, ...] = (
    "oesophagus",          # mild linear uptake along the whole oesophagus (SUVmax about 2.6-3.2)
    "thymus",              # bilobed thymus in the prevascular space (SUVmax about 2.6-3.3)
    "marrow",              # mildly raised vertebral marrow (SUVmax about 2.6-3.2)
    "granulomatous-hila",  # symmetric bilateral hilar nodes, SUVmax about 3 (reactive)
)
#: Other names accepted for a confounder.
ALIASES: dict[str, str] = {"myocardium": "hot-myocardium", "esophagus": "oesophagus",
                           "bone-marrow": "marrow", "granulomatous-hilar": "granulomatous-hila"}
ALL_CONFOUNDERS: tuple[str, ...] = CONFOUNDERS + PHYSIOLOGY
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
        Any of :data:`ALL_CONFOUNDERS` (or an alias from :data:`ALIASES`).
    realistic : bool
        PET as a clinical scanner makes it (:data:`nstage.phantom.pet.REALISTIC`: 4.07 mm
        voxels on its own origin, 6.5 mm FWHM, liver CoV 12 %, liver SUV 2.0, blood pool
        1.6); otherwise the phantom's historical PET (4 mm, 7 mm FWHM, liver CoV 9 %,
        liver 2.2, blood 1.7).
    node_suv_max : float, optional
        Noise-free blurred SUVmax of every requested node (the activity is calibrated to it);
        a node below 2.5 is recorded as not counting. Default: drawn (4-12 before blur, at
        least 3.8 after).
    node_short_axis_mm : float, optional
        Short axis of every requested node (mm). Default: drawn (10-20 mm).
    """

    nodes: tuple[str, ...] = ()
    primary_side: Literal["left", "right", "none"] = "right"
    primary_lobe: Literal["upper", "middle", "lower"] = "upper"
    extent: Literal["thorax", "whole-body"] = "thorax"
    seed: int = 0
    confounders: frozenset[str] = frozenset()
    realistic: bool = False
    node_suv_max: float | None = None
    node_short_axis_mm: float | None = None

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
        confounders = frozenset(ALIASES.get(c, c) for c in self.confounders)
        bad = sorted(confounders - set(ALL_CONFOUNDERS))
        if bad:
            raise UsageError(f"unknown confounder {bad[0]!r}",
                             hint=f"valid confounders: {', '.join(ALL_CONFOUNDERS)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed must be a non-negative integer, not {self.seed!r}")
        if self.node_suv_max is not None and not 0.5 <= float(self.node_suv_max) <= 50.0:
            raise UsageError(f"node SUVmax must be 0.5-50, not {self.node_suv_max!r}")
        if self.node_short_axis_mm is not None \
                and not 6.0 <= float(self.node_short_axis_mm) <= 30.0:
            raise UsageError(f"node short axis must be 6-30 mm, not {self.node_short_axis_mm!r}")
        return PhantomSpec(nodes, self.primary_side, self.primary_lobe, self.extent,
                           int(self.seed), confounders, bool(self.realistic),
                           self.node_suv_max, self.node_short_axis_mm)


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
