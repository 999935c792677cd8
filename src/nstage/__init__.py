"""nstage: open, interpretable lung-cancer N-staging from FDG-PET/CT.

The package reads a CT + FDG-PET pair, finds the primary tumour and FDG-avid
lymph nodes, maps each node to its IASLC station and side, and applies the TNM
N rules (8th edition N0-N3, 9th edition N2a/N2b, NX when not assessable).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
