"""transport/_fastframes.py: frame reprs are the strings hyperframe makes, made cheaply."""

from __future__ import annotations

import hyperframe.frame
from hypothesis import given
from hypothesis import strategies as st

from spear.transport import _fastframes


@given(st.none() | st.binary(max_size=64))
def test_the_same_string_as_hyperframes(data: bytes | None) -> None:
    assert _fastframes.upstream is not None
    assert _fastframes._raw_data_repr(data) == _fastframes.upstream(data)


def test_the_same_repr_of_whole_frames_as_hyperframes() -> None:
    frames = [
        hyperframe.frame.DataFrame(1, data=bytes(range(200)) * 100),
        hyperframe.frame.DataFrame(3, data=b"short"),
        hyperframe.frame.DataFrame(5, data=b""),
    ]
    _fastframes.install()
    try:
        patched = [repr(f) for f in frames]
    finally:
        hyperframe.frame._raw_data_repr = _fastframes.upstream
    upstream = [repr(f) for f in frames]
    _fastframes.install()
    assert patched == upstream
    assert patched[0].endswith("<hex:00010203040506070809...>")


def test_installed_for_every_data_frame_by_a_client() -> None:
    from spear.node.client import Client

    Client("127.0.0.1:1")  # makes no connection: the channel opens on first call
    assert _fastframes.installed()
    assert hyperframe.frame._raw_data_repr is _fastframes._raw_data_repr
