"""The two speed-ups that replace a third-party function, installed where spear starts a
gRPC server or client (never on import): `install()`, idempotent.

Each replacement is tested against the library's own output for the same input
(tests/transport/test_fastframes.py, test_tls_writes.py) on the versions pinned in
pyproject.toml. On any other version a patch does nothing and says so once at debug
level: the library's own, slower code runs, and behaviour is unchanged.
"""

from __future__ import annotations


def install() -> None:
    """Install both speed-ups (each only on the library version it was tested against)."""
    from spear.transport import _fastframes, _tls_writes

    _fastframes.install()
    _tls_writes.install()  # (TLS connections only: fewer records a call)
