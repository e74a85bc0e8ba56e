"""Mutation testing of the modules that must never be wrong (mutmut 3, one module at a time).

    python tools/mutation.py                 # every module below, smallest first
    python tools/mutation.py status abi      # only the targets so named (or, for a word that
                                             # names none, whose name contains it)
    python tools/mutation.py --list          # the modules, their tests and sizes

Each module runs in a scratch copy of the repository (build/mutation/<name>/: src, tests
and what the tests read), so mutmut's `mutants/` tree and cache never touch the work tree,
and a module's run is resumed where it stopped when run again. mutmut runs with one
worker (the machine is shared), the module's own tests only, and two time limits: mutmut's
on CPU time (6 times the tests' clean time plus 60 s; half that of wall time) and WALL_S
seconds per test (a test waiting forever uses no CPU). What it found goes to
docs/mutation/<name>.json (killed, survived, timed out, ...) and <name>.survivors.txt.

    python tools/mutation.py --only-not-killed scheduler   # after adding tests: only the
                                                           # mutants not killed run again
    python tools/mutation.py --not-checked controller      # a run stopped part way: only
                                                           # the mutants it never ran
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "build" / "mutation"
REPORTS = ROOT / "docs" / "mutation"
# What the tests read besides src/ and tests/ (C agents' sources and headers, examples).
COPIED = ("src", "tests", "sdk", "examples", "pyproject.toml")
WALL_S = 60  # a test of a mutant running longer than this is taken to hang


@dataclass(frozen=True)
class Target:
    name: str
    modules: tuple[str, ...]  # paths under src/
    tests: tuple[str, ...]  # pytest selections, relative to the repository

    def size(self) -> int:
        return sum(len((ROOT / "src" / m).read_text().splitlines()) for m in self.modules)


_T = "tests/"
TARGETS = (
    Target(
        "status",
        ("spear/transport/_status.py",),
        (
            _T + "transport/test_wire_status.py",
            _T + "transport/test_wire_codec.py",
            _T + "transport/test_spearlet_service.py",
        ),
    ),
    Target(
        "abi",
        ("spear/runtimes/wasm/hostcalls/abi.py",),
        (
            _T + "runtimes/test_hostcalls_buffers.py",
            _T + "runtimes/test_hostcalls_memory.py",
            _T + "runtimes/test_hostcalls_objects.py",
            _T + "runtimes/test_hostcalls_streams.py",
            _T + "runtimes/test_guest_memory_faults.py",
            _T + "runtimes/test_hostcalls_counted_and_traced.py",
        ),
    ),
    Target("models", ("spear/core/models.py",), (_T + "core/test_models.py",)),
    Target(
        "scheduler",
        ("spear/core/scheduler.py",),
        # (Not tests/cluster/test_placement.py: its tests marked KNOWN_HANG hang about one
        # run in 30 on their own, which a mutation run reads as the mutant's timeout.)
        (_T + "core/test_scheduler.py", _T + "core/test_scheduler_rules.py"),
    ),
    Target(
        "sms",
        ("spear/core/sms.py",),
        (
            _T + "core/test_sms.py",
            _T + "core/test_sms_rules.py",
            _T + "core/test_liveness.py",
            _T + "core/test_sms_leader.py",
            _T + "core/test_retry_placement.py",
            _T + "cluster/test_membership.py",
        ),
    ),
    Target(
        "kv",
        ("spear/store/kv.py", "spear/store/leveldb.py"),
        (
            _T + "store/test_kv_contract.py",
            _T + "store/test_leveldb.py",
            _T + "store/test_leveldb_rules.py",
            _T + "store/test_kv_mutants.py",
            _T + "core/test_staged_start.py",
        ),
    ),
    Target(
        "hostops",
        ("spear/runtimes/host/ops.py",),
        (
            _T + "runtimes/test_hostcalls_ops.py",
            _T + "runtimes/test_hostops_rules.py",
            _T + "runtimes/test_hostops_edges.py",
            _T + "runtimes/test_hostcalls_objects.py",
            _T + "runtimes/test_hostcalls_streams.py",
            _T + "runtimes/test_hostcalls_buffers.py",
        ),
    ),
    Target(
        "objects",
        ("spear/store/objects.py",),
        (
            _T + "store/test_objects.py",
            _T + "store/test_objects_rules.py",
            _T + "store/test_objects_mutants.py",
            _T + "runtimes/test_hostcalls_ops.py",
            _T + "runtimes/test_hostops_rules.py",
            _T + "runtimes/test_hostops_edges.py",
            _T + "transport/test_object_transfer_staging.py",
            _T + "cluster/test_object_commits.py",  # (store_results in a cluster)
        ),
    ),
    Target(
        # The ObjectAuthority seam (a Protocol: no code of its own, so no mutant) and the
        # SMS's implementation of it, which decides every object's version in a cluster.
        "authority",
        ("spear/store/object_authority.py", "spear/core/object_index.py"),
        (
            _T + "core/test_object_index.py",
            _T + "core/test_object_leases.py",
            _T + "core/test_object_index_rules.py",
            _T + "core/test_object_tombstones.py",
        ),
    ),
    Target(
        "taskstore",
        ("spear/core/tasks/store.py", "spear/core/tasks/codec.py"),
        (
            _T + "core/test_task_store.py",
            _T + "core/test_task_codec.py",
            _T + "core/test_run_many.py",
            _T + "core/test_staged_start.py",
        ),
    ),
    Target(
        # Encrypted object transfers' record layer: what an attacker on the wire may do.
        "sealed",
        ("spear/transport/sealed.py",),
        (_T + "transport/test_sealed.py", _T + "transport/test_object_transfer_rules.py"),
    ),
    Target(
        # What every task goes through once admitted (start, outcome, release, settle),
        # and what a cancel or a caller that goes away finds meanwhile.
        "running",
        ("spear/core/tasks/running.py",),
        (
            _T + "core/test_caller_gone.py",
            _T + "core/test_controller_rules.py",
            _T + "core/test_controller_room.py",
            _T + "core/test_controller_ends.py",
            _T + "core/test_run_many.py",
            _T + "core/test_controller_full_disk.py",
            _T + "core/test_finished_hooks.py",
            _T + "core/test_stopping_node.py",
            _T + "test_disk_full.py",
        ),
    ),
    Target(
        # The guard of every gRPC call: admission before the request is decoded, the
        # error mapping, the message size limit, the caller's traceparent.
        "aio_server",
        ("spear/transport/aio_server.py",),
        (
            _T + "transport/test_aio_server.py",
            _T + "transport/test_aio_server_rules.py",
            _T + "transport/test_grpc_server.py",
            _T + "transport/test_malformed_requests.py",
        ),
    ),
    Target(
        # Tokens made at the SMS, accepted by every member (asked once a second at most).
        "cluster_tokens",
        ("spear/transport/cluster_tokens.py",),
        (
            _T + "transport/test_auth_mutants.py",
            _T + "transport/test_cluster_token_cache.py",
        ),
    ),
    Target(
        # The cluster's CA and members' certificates, and the TLS contexts made from them.
        "tls",
        ("spear/transport/tls.py",),
        (
            _T + "transport/test_tls_files.py",
            _T + "transport/test_auth.py",
            _T + "transport/test_certificate_names.py",
        ),
    ),
    Target(
        # Which path a client's object bytes take (the object socket, the transfer
        # service, gRPC), and when a failed one is tried again.
        "object_route",
        ("spear/node/object_route.py",),
        (
            _T + "transport/test_object_route_rules.py",
            _T + "transport/test_local_object_transfer.py",
            _T + "cluster/test_object_route.py",
        ),
    ),
    Target(
        # Files of replaced values written over by the next ones: never one a reader
        # still has open or mapped, within the pool's bounds.
        "spare_files",
        ("spear/store/spare_files.py",),
        (_T + "store/test_spare_files.py", _T + "store/test_objects.py"),
    ),
    Target(
        # A value read into one new bytes, filled in place through CPython's C API.
        "filled_bytes",
        ("spear/transport/filled_bytes.py",),
        (_T + "transport/test_filled_bytes.py", _T + "transport/test_object_transfer_rules.py"),
    ),
    Target(
        # A node as one namespace sees it: its tasks, objects and quotas only, and
        # nothing of the node it wraps that it does not scope.
        "namespaced",
        ("spear/node/namespaced.py",),
        (
            _T + "test_namespaced_node.py",
            _T + "transport/test_namespaces.py",
            _T + "test_quota_rules.py",
            _T + "test_log_quota.py",
            _T + "cluster/test_cluster_quotas.py",
            _T + "toolkit/test_subtasks_quota.py",
        ),
    ),
    Target(
        # How every spear client calls a grpc.aio server: credentials, limits, metadata,
        # and failures back as spear's own errors; and the streams' adapter.
        "aio_client",
        ("spear/transport/aio_client.py", "spear/transport/aio_streams.py"),
        (
            _T + "transport/test_aio_streams.py",
            _T + "transport/test_aio_channel_rules.py",
            _T + "transport/test_aio_server.py",
            _T + "transport/test_aio_server_rules.py",
            _T + "transport/test_wire_status.py",
            _T + "transport/test_grpc_server.py",
            _T + "transport/test_auth_mutants.py",
        ),
    ),
    Target(
        "controller",
        ("spear/core/tasks/controller.py",),
        (
            _T + "core/test_controller_rules.py",
            _T + "core/test_controller_room.py",
            _T + "core/test_controller_ends.py",
            _T + "core/test_hooks_later.py",
            _T + "test_local_node.py",
            _T + "core/test_run_many.py",
            _T + "core/test_finished_hooks.py",
            _T + "core/test_retries.py",
            _T + "core/test_controller_full_disk.py",
            _T + "core/test_staged_start.py",
        ),
    ),
    Target(
        "etcd",
        ("spear/store/etcd.py",),
        (
            _T + "store/test_kv_contract.py",
            _T + "store/test_etcd_client.py",
            _T + "store/test_etcd_rules.py",
            _T + "store/test_etcd_watch.py",
            _T + "store/test_etcd_edges.py",
        ),
    ),
    Target(
        "namespaces",
        ("spear/core/namespaces.py",),
        (_T + "core/test_namespaces_rules.py", _T + "transport/test_namespaces.py"),
    ),
    Target("admission", ("spear/core/tasks/admission.py",), (_T + "core/test_admission.py",)),
    Target(
        # A member's object commits grouped while one is on the wire: each must still be
        # answered on its own, in order per key (a real SMS over gRPC with TLS).
        "commits",
        ("spear/node/object_commits.py",),
        (_T + "cluster/test_object_commits.py",),
    ),
    Target(
        # Members' proofs: what admits a caller as a cluster member on the ports that
        # take users too (the certificate is not asked for at their handshake)
        "member_proof",
        ("spear/transport/member_proof.py",),
        (_T + "transport/test_member_proof.py",),
    ),
    Target(
        # A member's cache of current object versions: a get served from it must never
        # return a version older than one already acknowledged elsewhere.
        "object_cache",
        ("spear/node/object_cache.py",),
        (
            _T + "core/test_object_leases.py",
            _T + "cluster/test_object_version_cache.py"
            "::test_cached_versions_are_served_and_invalidated",
        ),
    ),
    Target(
        # Queued tasks: first come first served per namespace and priority, with a bound.
        "fair_queue",
        ("spear/core/fair_queue.py",),
        (_T + "core/test_fair_queue.py",),
    ),
    Target(
        # Which nodes are live: what a lost task's retry and every placement trust.
        "liveness",
        ("spear/core/liveness.py",),
        (_T + "core/test_liveness.py",),
    ),
    Target(
        # Retries of tasks lost with their node or failed: run again, never twice.
        "retries",
        ("spear/core/retries.py", "spear/core/retry_placement.py"),
        (_T + "core/test_retries.py", _T + "core/test_retry_placement.py"),
    ),
    Target(
        # A member's task reports to the SMS: each task's latest state, in order, none lost
        # while the SMS is away or while a report is on the way.
        "task_reports",
        ("spear/core/task_reports.py",),
        (_T + "core/test_task_reports.py",),
    ),
    Target(
        # A member's registration, heartbeats and leave: the membership state machine,
        # and whether the SMS knew the node when it registers (task_reports' resync).
        "node_controller",
        ("spear/core/node_controller.py",),
        (_T + "core/test_node_controller.py",),
    ),
    Target(
        # Deleting finished tasks: never a running one, only what the policy lets go.
        "retention",
        ("spear/core/retention.py",),
        (_T + "test_task_deletion.py",),
    ),
    Target(
        # The SMS forgetting deleted tasks: only finished ones, of the caller's namespace,
        # run on the calling member, all or nothing.
        "sms_retention",
        ("spear/core/sms_retention.py",),
        (_T + "core/test_sms_retention_rules.py",),
    ),
    Target(
        # The stdin of tasks that may run again elsewhere, kept at the SMS until they end.
        "task_inputs",
        ("spear/core/task_inputs.py",),
        (_T + "core/test_retry_placement.py",),
    ),
    Target(
        # A task named by a prefix: exactly one task, never a guess among several.
        "task_ids",
        ("spear/core/task_ids.py",),
        (_T + "core/test_task_ids.py",),
    ),
    Target(
        # Idempotent submission: a key makes at most one task however often it is sent.
        "idempotency",
        ("spear/node/idempotency.py",),
        (_T + "core/test_idempotency_rules.py", _T + "transport/test_idempotent_submit.py"),
    ),
    Target(
        # The hook that keeps ended tasks' results: each namespace's at its keys, one
        # namespace's failure said and not keeping the others'.
        "results",
        ("spear/core/results.py",),
        (_T + "core/test_task_results.py",),
    ),
    Target(
        # Client failover: which node is asked next, which failures are retried (never a
        # call that may still be running), and how long the client waits first.
        "failover",
        ("spear/node/failover.py",),
        (_T + "core/test_failover_rules.py",),
    ),
    Target(
        # A batch run to its ends across a cluster (SubmitTasks, a call that does not fit
        # here): every task placed, run once, its end or its refusal answered.
        # (Not tests/cluster/test_placement.py: its batches wait with no deadline of their
        # own, so a mutant that makes one wait for ever reads as a timeout whenever one
        # of its tests runs first; what they check of batches.py is stated here too.)
        "batches",
        ("spear/node/batches.py",),
        (_T + "cluster/test_batches_rules.py",),
    ),
    Target(
        # Per-namespace quotas (unfinished tasks, object bytes, log bytes): what one
        # namespace may take of a node; a change of the file is seen at the next call.
        "quotas",
        ("spear/node/quotas.py",),
        (
            _T + "test_quota_rules.py",
            _T + "test_log_quota.py",
            _T + "transport/test_namespaces.py",
            _T + "cluster/test_cluster_quotas.py",
        ),
    ),
    Target(
        # Uploaded modules kept by digest: what runs is what was checked, and a name
        # cannot place a module outside its digest's directory.
        "artifacts",
        ("spear/core/artifacts.py",),
        (_T + "core/test_artifacts.py", _T + "transport/test_spearlet_service.py"),
    ),
    Target(
        "auth",
        ("spear/transport/auth.py",),
        (
            _T + "transport/test_auth.py",
            _T + "transport/test_auth_rules.py",
            _T + "transport/test_auth_mutants.py",
            _T + "transport/test_token_store_fresh.py",
        ),
    ),
    Target(
        # The node's Unix object socket for clients on its host: a get hands over the
        # value's file, a put takes a memfd; tokens, roles, namespaces and quotas checked
        # there as on the transfer port (a security boundary).
        "object_socket",
        ("spear/transport/object_socket.py",),
        (
            _T + "transport/test_object_socket_rules.py",
            _T + "transport/test_local_object_transfer.py",
            _T + "cluster/test_object_route.py",
        ),
    ),
    Target(
        # The object transfer service: object bytes between nodes and from clients, over
        # TLS or (members, after mutual TLS) the kernel's sendfile; tokens, roles,
        # namespaces and quotas checked as over gRPC; nothing half-received kept.
        "object_transfer",
        ("spear/transport/object_transfer.py",),
        (
            _T + "transport/test_object_transfer_rules.py",
            _T + "transport/test_object_transfer_staging.py",
            _T + "transport/test_local_object_transfer.py",
            _T + "cluster/test_object_route.py",
        ),
    ),
)


NAMES = {t.name for t in TARGETS}


def _config(target: Target) -> str:
    basetemp = Path(tempfile.gettempdir()) / f"spear-mut-{target.name}"  # (short: Unix sockets)
    tests = [t for t in target.tests if (ROOT / t.split("::")[0]).exists()]
    lines = [
        "",
        "[tool.mutmut]",
        'source_paths = ["src"]',
        # (into mutants/, where the tests run: C agents' sources and the SDK header)
        'also_copy = ["sdk", "examples"]',
        f"only_mutate = {json.dumps(['src/' + m for m in target.modules])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # -p no:cacheprovider: no .pytest_cache in the copy. mutmut's own limit is on CPU
        # time, which a test waiting forever (a lost wake-up) never reaches: a test over
        # WALL_S seconds makes the run exit as mutmut's "timeout" (tests/conftest.py), so
        # a hang is neither counted killed nor left to pytest's 120 s default.
        # -n 0: mutmut runs pytest in its own process, not on the addopts' xdist workers.
        # --basetemp: one directory per target, emptied by each mutant's session. (The
        # default, /tmp/pytest-of-USER/pytest-N, is kept by every forked child, which
        # exits without pytest's clean-up: ~80 GB over three targets' runs filled a disk.)
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-n", "0",'
        f' "--hypothesis-profile=mutation", "--timeout={WALL_S}",'
        f' "--basetemp={basetemp}"]',
        # grpc and the wasm runtime start threads: fork workers from a clean server.
        'process_isolation = "forkserver"',
        "use_git_change_detection = false",
        "timeout_multiplier = 3.0",
        # mutmut also stops a mutant's tests after (their clean time + 10 s) x 3 of wall
        # time: longer than the tests' own bounded waits (20-30 s), so a mutant that makes
        # a wait endless fails by the test's assertion instead of being read as a timeout.
        "timeout_constant = 10.0",
    ]
    return "\n".join(lines) + "\n"


def _prepare(target: Target, resume: bool) -> Path:
    work = SCRATCH / target.name
    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source, dest = ROOT / name, work / name
        if source.is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(
                source,
                dest,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
            )
        else:
            shutil.copy2(source, dest)
    pyproject = work / "pyproject.toml"
    pyproject.write_text((ROOT / "pyproject.toml").read_text() + _config(target))
    # It must exist when Python starts: a PYTHONPATH entry missing then is never looked at
    # again (its finder is cached as None), and the tests would import the real package.
    (work / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    return work


def _stats(work: Path) -> dict[str, int]:
    subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=work, check=True)
    data: dict[str, int] = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    return data


def _not_killed(work: Path) -> list[str]:
    """The mutants of the last run that no test killed (survived, timed out, no tests)."""
    if not (work / "mutants").exists():
        return []
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
    ).stdout
    lines = (ln.strip() for ln in out.splitlines())
    return [ln.split(":")[0] for ln in lines if ln and "killed" not in ln and ":" in ln]


def _verdicts(work: Path) -> dict[Path, dict[str, object]]:
    """mutmut's saved results, per mutated file (its .meta files under mutants/)."""
    metas = sorted((work / "mutants").rglob("*.py.meta"))
    return {meta: json.loads(meta.read_text()) for meta in metas}


def _keep_verdicts(saved: dict[Path, dict[str, object]], rerun: set[str]) -> None:
    """Put back every verdict of `saved` but those of `rerun`: a change of the tests makes
    mutmut forget all its results, but a mutant killed stays killed when tests are only
    added, and only the mutants not killed need running again."""
    for meta, before in saved.items():
        if not meta.exists():
            continue
        after = json.loads(meta.read_text())
        for table in ("exit_code_by_key", "durations_by_key"):
            old, new = before.get(table, {}), after.setdefault(table, {})
            assert isinstance(old, dict) and isinstance(new, dict)
            for key, value in old.items():
                if key not in rerun:
                    new[key] = value
        meta.write_text(json.dumps(after))


def _not_checked(work: Path) -> list[str]:
    """The mutants the last run never ran (stopped part way) or ran with no test reaching
    them (mutmut's exit code 33: tests added since may reach them)."""
    names = []
    for verdicts in _verdicts(work).values():
        codes = verdicts.get("exit_code_by_key", {})
        assert isinstance(codes, dict)
        names += [key for key, code in codes.items() if code is None or code == 33]
    return sorted(names)


def run(
    target: Target,
    resume: bool = False,
    again: bool = False,
    only: bool = False,
    unchecked: bool = False,
) -> dict[str, object]:
    if only or unchecked:
        return _run_only_not_killed(target, unchecked)
    work = _prepare(target, resume or again)
    env = dict(os.environ)
    # Subprocesses the tests start (the CLI, process agents) import the mutated copy too.
    env["PYTHONPATH"] = str(work / "mutants" / "src")
    env["SPEAR_MUTATION_RUN"] = "1"
    started = time.monotonic()
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", "1"]
    # --again: the last run's mutants not killed, tried against the tests as they are now
    # (a resumed run keeps every result it has); then whatever was never run.
    rerun = _not_killed(work) if again else []
    for names in ([rerun] if rerun else []) + [[]]:
        proc = subprocess.run(command + names, cwd=work, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"mutmut failed on {target.name} (exit {proc.returncode})")
    return _report(target, work, started)


def _run_only_not_killed(target: Target, unchecked: bool = False) -> dict[str, object]:
    """The last run's mutants not killed (`unchecked`: only those it never ran), against
    the tests as they are now (new tests added to the target included); every other
    verdict is kept."""
    work = SCRATCH / target.name
    rerun = _not_checked(work) if unchecked else _not_killed(work)
    if not rerun:
        raise SystemExit(f"{target.name}: no earlier run to take the mutants to run from")
    saved = _verdicts(work)
    work = _prepare(target, resume=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work / "mutants" / "src")
    env["SPEAR_MUTATION_RUN"] = "1"
    started = time.monotonic()
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *rerun]
    proc = subprocess.run(command, cwd=work, env=env)
    _keep_verdicts(saved, set(rerun))
    if proc.returncode != 0:
        raise SystemExit(f"mutmut failed on {target.name} (exit {proc.returncode})")
    return _report(target, work, started)


def _report(target: Target, work: Path, started: float) -> dict[str, object]:
    stats = _stats(work)
    stats["seconds"] = round(time.monotonic() - started)
    results = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    REPORTS.mkdir(parents=True, exist_ok=True)
    summary = {"modules": list(target.modules), "tests": list(target.tests), **stats}
    (REPORTS / f"{target.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [ln.strip() for ln in results.splitlines() if ln.strip() and "killed" not in ln]
    (REPORTS / f"{target.name}.survivors.txt").write_text(
        "".join(_described(work, ln) for ln in lines)
    )
    return summary


def _described(work: Path, line: str) -> str:
    """A mutant that was not killed, as `name: status` and the lines it changed."""
    name = line.split(":")[0]
    diff = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True
    ).stdout
    changed = [d for d in diff.splitlines() if d[:2] in ("- ", "+ ")]
    return line + "\n" + "".join(f"    {d}\n" for d in changed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help="only the targets so named, or whose name contains these"
    )
    parser.add_argument("--list", action="store_true", help="list the targets and stop")
    parser.add_argument(
        "--resume", action="store_true", help="keep the last run's results (mutants/) and go on"
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="as --resume, but first run again the mutants the last run did not kill",
    )
    parser.add_argument(
        "--only-not-killed",
        action="store_true",
        help="run only the last run's mutants not killed, against the tests as they are now"
        " (with tests added since), and keep every other verdict",
    )
    parser.add_argument(
        "--not-checked",
        action="store_true",
        help="go on with a run stopped part way: only the mutants it never ran, against the"
        " tests as they are now (with tests added since), keeping every verdict it has",
    )
    args = parser.parse_args()
    targets = sorted(TARGETS, key=Target.size)
    if args.names:  # a target's exact name is that target alone ("auth", not "authority")
        targets = [
            t
            for t in targets
            if any(n == t.name or (n in t.name and n not in NAMES) for n in args.names)
        ]
    for target in targets:
        if args.list:
            print(f"{target.name:10} {target.size():5} lines  {' '.join(target.modules)}")  # noqa: T201
            continue
        summary = run(target, args.resume, args.again, args.only_not_killed, args.not_checked)
        print(f"{target.name}: {json.dumps(summary)}", flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
