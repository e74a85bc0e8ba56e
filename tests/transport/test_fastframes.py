"""transport/_fastframes.py: frame reprs are the strings hyperframe makes, made cheaply."""

from __future__ import annotations

import binascii

import hyperframe.frame
from hypothesis import given
from hypothesis import strategies as st

from spear.transport import _fastframes


def _hyperframes_own(data: bytes | None) -> str:  # hyperframe 6.1's, as it stands
    if not data:
        return "None"
    r = binascii.hexlify(data).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


@given(st.none() | st.binary(max_size=64))
def test_the_same_string_as_hyperframes(data: bytes | None) -> None:
    assert _fastframes._raw_data_repr(data) == _hyperframes_own(data)


def test_installed_for_every_data_frame() -> None:
    import spear.transport._convert  # noqa: F401 - installs it

    assert hyperframe.frame._raw_data_repr is _fastframes._raw_data_repr
    frame = hyperframe.frame.DataFrame(1, data=bytes(range(200)) * 100)
    assert repr(frame).endswith("<hex:00010203040506070809...>")
