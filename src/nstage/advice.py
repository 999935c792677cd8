"""What an error tells the user to do, where the same advice is given from several places.

Every flag named here exists in the commands that can raise the error (``nstage run``,
``nstage batch``, ``nstage anatomy``, ``inference.py``); ``tests/test_advice.py`` parses each
flag named in any error text with the real parser of its command.
"""

from __future__ import annotations

# Optional packages -> the extra of nstage that installs them (pyproject.toml).
EXTRA_OF_PACKAGE = {
    "gcapi": "gc",
    "httpx": "gc",
    "torch": "models",
    "torchvision": "models",
    "nnunetv2": "models",
    "totalsegmentator": "models",
    "nibabel": "models",
}

ANATOMY_FALLBACK = "--anatomy classical"
LESIONS_FALLBACK = "--lesions suv"


def pip_install(extra: str) -> str:
    """The command that installs an extra, quoted for any shell: ``pip install "nstage[gc]"``."""
    return f'pip install "nstage[{extra}]"'


def missing_package(package: str) -> str | None:
    """One-line advice for an optional package that is not installed (None: not optional)."""
    root = (package or "").split(".")[0]
    extra = EXTRA_OF_PACKAGE.get(root)
    if extra is None:
        return None
    return f"the optional package '{root}' is not installed (install it with: {pip_install(extra)})"


def totalseg_weights_hint(fast: bool) -> str:
    """How to get TotalSegmentator's weights, or run without them."""
    task = "total_fast" if fast else "total"
    return (f"get them once on a machine with internet: {pip_install('models')}, then "
            f"'totalseg_download_weights -t {task}' (it saves them under "
            "$TOTALSEG_HOME_DIR/nnunet/results, default ~/.totalsegmentator); copy them here, "
            "or set TOTALSEG_WEIGHTS_PATH to the folder holding the DatasetNNN_* folders "
            "(or TOTALSEG_HOME_DIR to the folder above nnunet/results); or run without them "
            f"with {ANATOMY_FALLBACK}")


def models_extra_hint(fallback: str) -> str:
    """The ``models`` extra is missing or broken: how to install it, or what to run instead."""
    return f"install it with: {pip_install('models')}; or use {fallback}"
