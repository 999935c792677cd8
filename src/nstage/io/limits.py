"""How much memory a run may use, and refusing inputs too large for it before reading voxels.

A small compressed file can declare gigabytes of voxels; reading it first and checking after
would end a Grand Challenge job (8 GB by default) with no message. The memory available is the
smallest of the container's limit (cgroup v2 ``memory.max``, cgroup v1
``memory.limit_in_bytes``) and the machine's physical memory, or what ``--max-memory-gb``
says. Staging holds several working copies of the input voxels at its peak (the images as
read, their canonical copies, the thoracic crop, the PET resampled onto the CT grid, masks and
distance maps): ``benchmarks/bench_pipeline.py`` measures about 1.1 GB peak for 0.32 GB of
input voxels, plus the interpreter and libraries. So the input voxels may take at most
:data:`INPUT_SHARE` of the memory available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nstage.errors import InputError
from nstage.io.integrity import human_bytes

# Share of the memory available that the input voxels (CT + PET as held in memory) may take.
INPUT_SHARE = 0.25
# cgroup files report "no limit" as "max" (v2) or as a huge number (v1: 2**63 rounded to pages).
_NO_LIMIT = 1 << 60
GB = 1e9


@dataclass(frozen=True)
class MemoryLimit:
    """Memory available to one run.

    Attributes
    ----------
    nbytes : int
        Bytes available.
    source : str
        Where the figure came from (``"cgroup v2 memory.max"``, ``"physical memory"``,
        ``"--max-memory-gb"``...).
    """

    nbytes: int
    source: str

    @property
    def input_budget(self) -> int:
        """Bytes the input voxels may take (:data:`INPUT_SHARE` of :attr:`nbytes`)."""
        return int(self.nbytes * INPUT_SHARE)


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _NO_LIMIT else None


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """``{"v2": path, "memory": path}`` from /proc/self/cgroup."""
    found: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            found["v2"] = path
        elif "memory" in controllers.split(","):
            found["memory"] = path
    return found


def _limits_up_the_tree(root: Path, rel: str, filename: str) -> list[int]:
    """Limits in ``root/rel/filename`` and in every parent up to ``root`` (the smallest wins)."""
    values = []
    folder = root / rel.lstrip("/")
    while True:
        value = _read_limit(folder / filename)
        if value is not None:
            values.append(value)
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return values


def cgroup_limit(cgroup_root: Path = Path("/sys/fs/cgroup"),
                 proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str] | None:
    """The container's memory limit in bytes and its source, or None when it sets none."""
    paths = _cgroup_paths(proc_cgroup)
    candidates: list[tuple[int, str]] = []
    if "v2" in paths:
        candidates += [(v, "cgroup v2 memory.max")
                       for v in _limits_up_the_tree(cgroup_root, paths["v2"], "memory.max")]
    v1_root = cgroup_root / "memory"
    if v1_root.is_dir():
        rel = paths.get("memory", "/")
        values = _limits_up_the_tree(v1_root, rel, "memory.limit_in_bytes")
        if not values and rel != "/":  # a container sees its own cgroup at the root
            values = _limits_up_the_tree(v1_root, "/", "memory.limit_in_bytes")
        candidates += [(v, "cgroup v1 memory.limit_in_bytes") for v in values]
    return min(candidates) if candidates else None


def physical_memory() -> int | None:
    """Physical memory of the machine in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit(max_memory_gb: float | None = None, *,
                 cgroup_root: Path = Path("/sys/fs/cgroup"),
                 proc_cgroup: Path = Path("/proc/self/cgroup")) -> MemoryLimit:
    """The memory one run may use: ``max_memory_gb`` when given, else the smaller of the
    container's limit and the physical memory (16 GB assumed where neither is known)."""
    if max_memory_gb is not None:
        return MemoryLimit(int(max_memory_gb * GB), "--max-memory-gb")
    candidates = []
    found = cgroup_limit(cgroup_root, proc_cgroup)
    if found is not None:
        candidates.append(found)
    physical = physical_memory()
    if physical:
        candidates.append((physical, "physical memory"))
    if not candidates:
        return MemoryLimit(int(16 * GB), "assumed (not reported by the system)")
    nbytes, source = min(candidates)
    return MemoryLimit(nbytes, source)


@dataclass(frozen=True)
class InputSize:
    """What one input will take in memory, known from its header alone.

    Attributes
    ----------
    what : str
        ``"CT"`` or ``"PET"``.
    path : Path
        File or DICOM folder.
    nbytes : int
        Bytes its voxels take as the pipeline holds them.
    describe : str
        E.g. ``512x512x300 int16``.
    """

    what: str
    path: Path
    nbytes: int
    describe: str


def check_input_sizes(sizes: list[InputSize], limit: MemoryLimit) -> None:
    """Refuse inputs whose voxels would not fit the memory budget, before any is read.

    Raises
    ------
    InputError
        Names the largest input, the sizes and the limit with its source.
    """
    total = sum(s.nbytes for s in sizes)
    if total <= limit.input_budget:
        return
    largest = max(sizes, key=lambda s: s.nbytes)
    both = "" if len(sizes) == 1 else f" (CT and PET together {human_bytes(total)})"
    raise InputError(
        f"declares {largest.describe} voxels, {human_bytes(largest.nbytes)} in memory"
        f"{both}: more than the {human_bytes(limit.input_budget)} the inputs may take with "
        f"{human_bytes(limit.nbytes)} of memory ({limit.source}; staging holds about "
        f"{round(1 / INPUT_SHARE)} working copies)", largest.path,
        hint="check the image's size; with more memory give --max-memory-gb GB")
