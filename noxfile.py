"""Developer sessions: tests, lint, typecheck, protos (regenerate), bench, mutation."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"  # use the environment quickstart.sh set up
nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "src", "tests", "benchmarks")
    session.run("ruff", "format", "--check", "src")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run("mypy", "src")


@nox.session
def bench(session: nox.Session) -> None:
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate src/spear/transport/_gen/ from every .proto under protos/, and
    src/spear/store/_etcd_gen/ from etcd's protos vendored in tools/etcd_protos/ (to take
    them again from Debian's golang-etcd-server-dev: `nox -s protos -- vendor`)."""
    session.run("python", "tools/gen_protos.py")
    session.run("python", "tools/gen_etcd_protos.py", *session.posargs)


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the critical modules, one at a time, smallest first:
    `nox -s mutation`, or `nox -s mutation -- status abi` for some. Long: not in CI's run.
    Run it before resolving an issue that touches those modules (docs/testing.md)."""
    session.run("python", "tools/mutation.py", *session.posargs)
