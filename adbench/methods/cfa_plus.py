"""CFA++ (Lee et al. 2022, Table 2): CFA ensembled over a resize-only and a resize+crop view.

The same detector as ``cfa`` with ``views: [resize, crop]`` (see adbench/methods/cfa.py): each
view has its own descriptor, radius and memory bank; the maps, each standardised on its training
images' patch scores, are averaged where the views overlap (the paper does not give its fusion rule).
It needs uncropped inputs (``dataset.crop`` = ``dataset.resize``); conf/method/cfa_plus.yaml passes both
so a cropped input is refused.
"""

from __future__ import annotations

from . import register
from .cfa import CFA


@register("cfa_plus")
class CFAPlusPlus(CFA):
    """CFA++: registered under its own name so its records and leaderboard rows say so (its fusion rule and
    input size are in ``deviations``, see ``CFA._deviations``)."""

    default_views = ("resize", "crop")
