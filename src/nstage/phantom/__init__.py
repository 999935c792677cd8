"""Digital PET/CT phantom with known truth (anatomy, nodes, primary, expected N).

``make_phantom(PhantomSpec(...))`` builds a study in memory; ``write_phantom(phantom, outdir)``
writes it in Grand Challenge layout with ``truth.json`` and the ground-truth anatomy.
"""

from nstage.phantom.build import make_phantom
from nstage.phantom.spec import ALL_CONFOUNDERS, CONFOUNDERS, PHYSIOLOGY, Phantom, PhantomSpec
from nstage.phantom.writer import write_phantom
from nstage.phantom.zones import ZoneGeometry, in_zone

__all__ = ["ALL_CONFOUNDERS", "CONFOUNDERS", "PHYSIOLOGY", "Phantom", "PhantomSpec", "ZoneGeometry", "in_zone", "make_phantom",
           "write_phantom"]
