"""The end-to-end N-staging case matrix over phantoms, and helpers to stage them in memory.

Each :class:`Case` is a phantom specification with its expected answer written by hand
(:attr:`Case.expected`: 8th and 9th edition N, the counted stations and the rule that gives
them, CLINICAL.md section 1), never computed by the staging code under test.
Cases cover N0, N1 (10/11 ipsilateral), N2a (single station, 7 alone included), N2b, N3 by
contralateral hilar, contralateral mediastinal and station 1, both primary sides, every
confounder with and without, and adjacent stations across the hard boundaries (4R/10R,
4L/5/10L, 2/4) in one mediastinum. Phantoms place a node's centre at least 3 mm inside its
zone, so nodes at adjacent stations lie close to the boundary between them;
:func:`zone_margin_mm` reports how close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from nstage.phantom import Phantom, PhantomSpec, ZoneGeometry, in_zone, make_phantom
from nstage.pipeline import RunOptions, StageResult, stage_study
from nstage.study import ImageGeometry, Study, StudyMeta

#: The embedded defaults (no model weights): classical anatomy, SUV lesions.
DEFAULTS = RunOptions(anatomy="classical", lesions="suv", report=False)


@dataclass(frozen=True)
class Case:
    """One phantom of the matrix.

    Attributes
    ----------
    id : str
        Test id: ``<category>-<primary side>-<stations>[+confounders]``.
    nodes : tuple of str
        IASLC stations of the FDG-avid metastatic nodes.
    primary_side : {"left", "right"}
    seed : int
        Phantom seed (fixed: a case is the same images every run).
    confounders : frozenset of str
    primary_lobe : {"upper", "middle", "lower"}
    slow : bool
        Part of the larger matrix, marked ``pytest.mark.slow``.
    expected : (str, str, str)
        Hand-written answer: 8th edition N, 9th edition N, and why (the station rules of
        CLINICAL.md 1 applied to the placed nodes; confounders never count).
    """

    id: str
    nodes: tuple[str, ...]
    primary_side: str
    seed: int
    confounders: frozenset[str] = field(default_factory=frozenset)
    primary_lobe: str = "upper"
    slow: bool = False
    expected: tuple[str, str, str] = ("", "", "")

    @property
    def expected_stations(self) -> list[str]:
        """Distinct counted stations: every placed metastatic node counts (sorted)."""
        return sorted(set(self.nodes))

    @property
    def spec(self) -> PhantomSpec:
        return PhantomSpec(nodes=self.nodes, primary_side=self.primary_side,
                           primary_lobe=self.primary_lobe, seed=self.seed,
                           confounders=self.confounders)


def _c(id_: str, nodes, side: str, seed: int, expected: tuple[str, str, str], conf=(),
       lobe: str = "upper", slow: bool = False) -> Case:
    return Case(id_, tuple(nodes), side, seed, frozenset(conf), lobe, slow, expected)


# Every confounder appears in at least two cases (one per primary side), every category on
# both sides, and every hard boundary with both of its stations in one phantom.
CASES: tuple[Case, ...] = (
    # -- fast core: one per category, both sides, each confounder once ------------------
    _c("N0-R", (), "right", 101, ("N0", "N0", "no metastatic node"), lobe="lower"),
    _c("N1-R-10R", ("10R",), "right", 102, ("N1", "N1", "10R ipsilateral hilar: N1")),
    _c("N2a-R-7", ("7",), "right", 103, ("N2", "N2a", "7 subcarinal: N2, one N2 station"), ("hot-myocardium",), lobe="lower"),
    _c("N2b-R-4R+7", ("4R", "7"), "right", 104, ("N2", "N2b", "4R ipsilateral mediastinal + 7 subcarinal: two N2 stations"), ("subthreshold-node",)),
    _c("N3-R-10L", ("10L",), "right", 105, ("N3", "N3", "10L contralateral hilar: N3"), ("hilar-symmetric",), lobe="middle"),
    _c("N3-R-4L", ("4L",), "right", 106, ("N3", "N3", "4L contralateral mediastinal: N3"), ("brown-fat",)),
    _c("N2a-L-4L", ("4L",), "left", 107, ("N2", "N2a", "4L ipsilateral mediastinal: N2, one station"), ("distant-lesion",)),
    _c("N3-L-1L", ("1L",), "left", 108, ("N3", "N3", "1L supraclavicular: N3 either side")),
    # -- larger matrix ------------------------------------------------------------------
    _c("N0-L", (), "left", 201, ("N0", "N0", "confounders only: no metastatic node"), ("hot-myocardium", "brown-fat", "subthreshold-node"),
       slow=True),
    _c("N0-R-hilar", (), "right", 202, ("N0", "N0", "symmetric reactive hila and a bone lesion: not N"), ("hilar-symmetric", "distant-lesion"), slow=True),
    _c("N1-R-11R", ("11R",), "right", 203, ("N1", "N1", "11R ipsilateral interlobar: N1"), ("brown-fat",), lobe="lower", slow=True),
    _c("N1-L-10L", ("10L",), "left", 204, ("N1", "N1", "10L ipsilateral hilar: N1"), ("hilar-symmetric",), lobe="lower", slow=True),
    _c("N2a-R-2R", ("2R",), "right", 205, ("N2", "N2a", "2R ipsilateral mediastinal: N2, one station"), ("distant-lesion",), slow=True),
    _c("N2b-L-2L+4L+5", ("2L", "4L", "5"), "left", 207, ("N2", "N2b", "2L, 4L, 5 ipsilateral mediastinal for a left primary: three N2 stations"), ("subthreshold-node",), slow=True),
    _c("N3-R-5", ("5",), "right", 208, ("N3", "N3", "5 is left-sided: contralateral mediastinal for a right primary (default setting): N3"), slow=True),
    _c("N3-R-1R", ("1R",), "right", 210, ("N3", "N3", "1R supraclavicular: N3"), ("brown-fat",), slow=True),
    _c("N3-L-4R", ("4R",), "left", 211, ("N3", "N3", "4R contralateral mediastinal for a left primary: N3"), ("hot-myocardium",), slow=True),
    _c("N3-L-10R", ("10R",), "left", 212, ("N3", "N3", "10R contralateral hilar: N3"), ("distant-lesion",), lobe="lower", slow=True),
    # -- hard boundaries: both neighbours in one mediastinum ------------------------------
    _c("boundary-4R|10R-R", ("4R", "10R"), "right", 301, ("N2", "N2a", "4R N2 (one N2 station) + 10R N1: highest N2"), slow=True),
    _c("boundary-4L|5|10L-L", ("4L", "5", "10L"), "left", 302, ("N2", "N2b", "4L and 5 ipsilateral mediastinal (two N2 stations) + 10L N1"), slow=True),
    _c("boundary-2R|4R-R", ("2R", "4R"), "right", 303, ("N2", "N2b", "2R and 4R: two N2 stations (a station is code with side)"), ("subthreshold-node",), slow=True),
)


@lru_cache(maxsize=2)
def phantom_for(case: Case) -> Phantom:
    """The case's phantom, built once for its consecutive tests (in memory)."""
    return make_phantom(case.spec)


def study_of(ph: Phantom) -> Study:
    """Wrap a phantom's images as a loaded :class:`Study` (no files)."""
    return Study(ct=ph.ct, pet=ph.pet, ct_geometry=ImageGeometry.of(ph.ct),
                 meta=StudyMeta(ct_source="phantom (in memory)", pet_source="phantom (in memory)",
                                suv_source="phantom: PET generated in SUV"))


def stage(ph: Phantom, perfect_anatomy: bool = False) -> StageResult:
    """Stage a phantom with the embedded defaults, or with its ground-truth anatomy."""
    return stage_study(study_of(ph), DEFAULTS, anatomy=ph.anatomy if perfect_anatomy else None)


def counted_stations(result: dict) -> list[str]:
    """Distinct stations of the positive nodes that carry an N category."""
    return sorted({n["station"] for n in result["nodes"] if n["n_category"]})


def zone_margin_mm(station: str, point, zg: ZoneGeometry) -> float:
    """How deep (mm) ``point`` lies inside ``station``'s zone (0 when outside; 1 mm steps)."""
    m = 0.0
    while m < 60.0 and in_zone(station, point, zg, margin=m + 1.0):
        m += 1.0
    return m if in_zone(station, point, zg) else 0.0


def describe(case: Case, ph: Phantom, staged: StageResult) -> str:
    """A one-paragraph account of expected vs found, for assertion messages."""
    t = ph.truth
    r = staged.result
    zg = ZoneGeometry.from_truth(t)
    n8, n9, why = case.expected
    lines = [f"case {case.id}: expected {n8}/{n9} {case.expected_stations} ({why}), got "
             f"{r['n_stage']}/{r['n_stage_9th']} {counted_stations(r)}; reasons {r['reasons']}"]
    for n in t["nodes"]:
        lines.append(f"  truth {n['kind']} {n['station']} at {n['centroid_mm']} short "
                     f"{n['short_axis_mm']} mm SUVmax(blurred) {n['suv_max_blurred']} "
                     f"margin {zone_margin_mm(n['station'], n['centroid_mm'], zg):.0f} mm")
    for key in ("nodes", "negative_node_candidates", "lung_lesions", "other_lesions"):
        for n in r[key]:
            lines.append(f"  found {key} {n.get('station')} at {n['centroid_mm']} "
                         f"SUVmax {n['suv_max']} short {n['short_axis_mm']}: {n['reason']}")
    p = r["primary_tumor"]
    lines.append(f"  primary truth {t['primary']['side'] if t['primary'] else None} at "
                 f"{t['primary']['centroid_mm'] if t['primary'] else None}; found "
                 f"{None if p is None else (p['side'], p['centroid_mm'])}")
    return "\n".join(lines)


def nearest_truth(point, ph: Phantom) -> tuple[dict | None, float]:
    """The truth node nearest to ``point`` (mm) and its distance."""
    best, dist = None, float("inf")
    for n in ph.truth["nodes"]:
        d = float(np.linalg.norm(np.subtract(point, n["centroid_mm"])))
        if d < dist:
            best, dist = n, d
    return best, dist


def main(argv: list[str] | None = None) -> int:
    """Diagnose cases: ``python tests/e2e_cases.py [CASE_ID ...]`` prints expected vs found
    (truth nodes with their zone margins, every lesion found with its reason) for the
    classical and the perfect anatomy, so a failure can be traced to segmentation (only the
    classical run fails), station logic (both fail, stations differ) or lesion detection."""
    import sys

    wanted = set(argv if argv is not None else sys.argv[1:])
    for case in CASES:
        if wanted and case.id not in wanted:
            continue
        ph = phantom_for(case)
        for perfect in (False, True):
            staged = stage(ph, perfect_anatomy=perfect)
            r = staged.result
            ok = (r["n_stage"], r["n_stage_9th"], counted_stations(r)) == (
                *case.expected[:2], case.expected_stations)
            print(f"[{'perfect' if perfect else 'classical'}] {'OK' if ok else 'FAIL'}")
            print(describe(case, ph, staged), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
