"""What crosses the wire between members and the SMS comes back as it left
(transport/_sms_convert.py): every field of a placement, so a node's reading of "no node
could ever run this" is the SMS's, including whether no node at all is live."""

from __future__ import annotations

import pytest

from spear.core.cluster import Placement
from spear.transport._sms_convert import placement_from_wire, placement_to_wire


@pytest.mark.parametrize(
    "placement",
    [
        Placement((), False, "no live node in the cluster", no_live_node=True),
        Placement((), False, "no live node has the labels zone=c", no_live_node=False),
        Placement((), True),
    ],
    ids=["no-live-node", "none-fits", "wait-for-room"],
)
def test_a_placement_crosses_the_wire_whole(placement: Placement) -> None:
    assert placement_from_wire(placement_to_wire(placement)) == placement
