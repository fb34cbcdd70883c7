"""CFA++ (Lee et al. 2022, Table 2): CFA ensembled over a resize-only and a resize+crop view.

The same detector as ``cfa`` with ``views: [resize, crop]`` (see adbench/methods/cfa.py): each
view has its own descriptor, radius and memory bank; the standardised maps are averaged where the
views overlap. It needs uncropped inputs (``dataset.crop`` = ``dataset.resize``); conf/method/cfa_plus.yaml
passes both so a cropped input is refused.
"""

from __future__ import annotations

from typing import ClassVar

from . import register
from .cfa import CFA


@register("cfa_plus")
class CFAPlusPlus(CFA):
    """CFA++: registered under its own name so its records and leaderboard rows say so."""

    default_views = ("resize", "crop")
    deviations: ClassVar[tuple[str, ...]] = (
        *CFA.deviations,
        "scored on the uncropped 256 px image (others: 224 px centre crop)",
    )
