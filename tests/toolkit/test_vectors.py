# ruff: noqa: F811 - the gguf fixture imported from its module is redefined as a parameter
"""The vector store (spear/toolkit/vectors.py) on real files: usearch's index, SQLite
records; through a process agent's SDK and the `spear vec` CLI."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, cli_env
from models.model_fixtures import gguf  # noqa: F401 - the fixture (for the RAG test)

from spear import FunctionSpec, LocalNode
from spear.core.models import Runtime, TaskState
from spear.errors import Conflict, InvalidArgument, NotFound, Unavailable
from spear.toolkit.vectors import Collection, VectorStore

if TYPE_CHECKING:
    from pathlib import Path


def _unit(values: list[float]) -> list[float]:
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    s = VectorStore(tmp_path / "vectors")
    yield s  # type: ignore[misc]
    s.close()


def test_upsert_query_delete_count(store: VectorStore) -> None:
    store.create("docs", 3)
    records = [
        {"id": "a", "vector": [1, 0, 0], "metadata": {"lang": "en", "year": 2020}, "text": "A"},
        {"id": "b", "vector": [0, 1, 0], "metadata": {"lang": "fr", "year": 2021}, "text": "B"},
        {"id": "c", "vector": [0.9, 0.1, 0], "metadata": {"lang": "fr", "year": 2022}},
    ]
    assert store.request({"op": "upsert", "collection": "docs", "records": records}) == 3
    hits = store.request({"op": "query", "collection": "docs", "vector": [1, 0, 0], "k": 2})
    assert [h["id"] for h in hits] == ["a", "c"]
    assert hits[0]["text"] == "A" and hits[0]["metadata"] == {"lang": "en", "year": 2020}
    assert hits[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    q = {"op": "query", "collection": "docs", "vector": [1, 0, 0], "k": 5}
    assert [h["id"] for h in store.request({**q, "filter": {"lang": "fr"}})] == ["c", "b"]
    assert [h["id"] for h in store.request({**q, "filter": {"year": {"$gte": 2021}}})] == [
        "c",
        "b",
    ]
    assert [h["id"] for h in store.request({**q, "filter": {"lang": {"$in": ["en"]}}})] == ["a"]
    # An upsert of an existing id replaces it.
    store.request(
        {"op": "upsert", "collection": "docs", "records": [{"id": "a", "vector": [0, 0, 1]}]}
    )
    assert store.request({**q, "k": 1})[0]["id"] == "c"
    assert store.request({"op": "count", "collection": "docs"}) == 3
    assert store.request({"op": "delete", "collection": "docs", "ids": ["a", "zz"]}) == 1
    assert store.request({"op": "count", "collection": "docs"}) == 2
    assert [i["name"] for i in store.request({"op": "list"})] == ["docs"]


def test_a_selective_filter_still_finds_every_match(store: VectorStore) -> None:
    rng = random.Random(7)
    store.create("many", 16)
    records = [
        {
            "id": str(i),
            "vector": _unit([rng.gauss(0, 1) for _ in range(16)]),
            "metadata": {"rare": i % 500 == 0},
        }
        for i in range(2000)
    ]
    store.request({"op": "upsert", "collection": "many", "records": records})
    hits = store.request(
        {
            "op": "query",
            "collection": "many",
            "vector": records[1]["vector"],
            "k": 10,
            "filter": {"rare": True},
        }
    )
    assert sorted(h["id"] for h in hits) == ["0", "1000", "1500", "500"]


def test_clean_errors(store: VectorStore) -> None:
    store.create("docs", 3)
    with pytest.raises(InvalidArgument, match="dimension mismatch.*3-dimensional.*has 2"):
        store.request({"op": "query", "collection": "docs", "vector": [1, 0]})
    with pytest.raises(InvalidArgument, match="dimension mismatch"):
        store.request(
            {"op": "upsert", "collection": "docs", "records": [{"id": "x", "vector": [1]}]}
        )
    with pytest.raises(NotFound, match="no vector collection 'nope'"):
        store.request({"op": "count", "collection": "nope"})
    with pytest.raises(Conflict, match="dim 3"):
        store.create("docs", 4)
    with pytest.raises(InvalidArgument, match="collection name"):
        store.create("../etc", 3)
    with pytest.raises(InvalidArgument, match="collection name"):
        store.create("docs\n", 3)  # (`$` alone would let a trailing newline through)
    with pytest.raises(InvalidArgument, match="operators"):
        store.request(
            {
                "op": "query",
                "collection": "docs",
                "vector": [1, 0, 0],
                "filter": {"x": {"$regex": "a"}},
            }
        )
    with pytest.raises(InvalidArgument, match="unknown vector op"):
        store.request({"op": "explode", "collection": "docs"})
    for record, message in [
        ({"id": "x", "vector": [1, "a", 0]}, "record 'x': a vector is a list of numbers"),
        (  # (a misspelt field is refused, not dropped)
            {"id": "x", "vector": [1, 0, 0], "meta": {"lang": "en"}},
            "record 'x': unknown field(s) meta (a record has id, metadata, text, vector)",
        ),
    ]:
        with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$"):
            store.request({"op": "upsert", "collection": "docs", "records": [record]})
    assert store.request({"op": "count", "collection": "docs"}) == 0  # (nothing written)


def test_collections_persist_and_rebuild_an_unsaved_index(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    store = VectorStore(root)
    store.create("docs", 2)
    store.request(
        {
            "op": "upsert",
            "collection": "docs",
            "records": [
                {"id": "a", "vector": [1, 0], "text": "kept"},
                {"id": "b", "vector": [0, 1]},
            ],
        }
    )
    store.close()
    assert (root / "docs" / "index.clean").exists()
    again = VectorStore(root)
    assert (
        again.request({"op": "query", "collection": "docs", "vector": [1, 0], "k": 1})[0]["text"]
        == "kept"
    )
    # One process at a time: a second open of a held collection is refused, not shared.
    with pytest.raises(Unavailable, match="held by another process"):
        Collection(root / "docs")
    again.close()
    # A process that died left no clean mark: the index is rebuilt from the records.
    (root / "docs" / "index.clean").unlink()
    (root / "docs" / "index.usearch").write_bytes(b"garbage")
    third = VectorStore(root)
    assert third.request({"op": "count", "collection": "docs"}) == 2
    assert (
        third.request({"op": "query", "collection": "docs", "vector": [0, 1], "k": 1})[0]["id"]
        == "b"
    )
    third.close()


SDK_AGENT = """
import errno, json
from spear import agent
a = agent.Agent()
a.vectors("create", "notes", dim=2)
a.vectors("upsert", "notes", records=[{"id": "x", "vector": [1, 0], "text": "east"},
                                      {"id": "y", "vector": [0, 1], "text": "north"}])
out = {"hit": a.vectors("query", "notes", vector=[0.1, 0.9], k=1)[0]["text"],
       "count": a.vectors("count", "notes")}
for name, request in {"dim": ("query", "notes", {"vector": [1, 2, 3]}),
                      "missing": ("count", "nope", {})}.items():
    try:
        a.vectors(request[0], request[1], **request[2])
    except agent.HostcallError as exc:
        out[name] = errno.errorcode[exc.errno]
a.set_result(json.dumps(out).encode())
"""


async def test_process_agent_sdk(tmp_path: Path) -> None:
    script = tmp_path / "vec_agent.py"
    script.write_text(SDK_AGENT)
    async with LocalNode(tmp_path / "home") as node:
        task = await node.run(FunctionSpec(str(script), runtime=Runtime.PROCESS, timeout_s=60))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        value, _ = await node.objects.get(f"results/{task.id}")
        assert json.loads(bytes(value)) == {
            "hit": "north",
            "count": 2,
            "dim": "EINVAL",
            "missing": "ENOENT",
        }
    # The node closed cleanly: the collection is on disk for the CLI.
    env = cli_env(tmp_path / "home")
    spear = [sys.executable, "-m", "spear", "vec"]
    out = subprocess.run([*spear, "ls"], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "notes dim 2 cos 2", out.stderr
    bad = subprocess.run(
        [*spear, "query", "notes", "--vector", "[1]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1
    assert "dimension mismatch" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_rag_example(tmp_path: Path, gguf: Path) -> None:
    """Ingest a folder with the local model's embeddings and answer from it (slow: the
    embedded SmolLM2)."""
    routing = tmp_path / "models.toml"
    routing.write_text(
        'default = "smollm2"\n[backends.local]\nkind = "llama"\nconcurrency = 1\n'
        f'[models.smollm2]\nbackend = "local"\npath = "{gguf}"\nmax_tokens = 64\n'
    )
    script = ROOT / "examples" / "rag" / "rag.py"
    docs = ROOT / "examples" / "rag" / "docs"
    async with LocalNode(tmp_path / "home", models_config=str(routing)) as node:
        # Asking with a paragraph's own words finds that paragraph first (same embedding).
        question = "Mars has two small moons, Phobos and Deimos, both probably captured asteroids."
        spec = FunctionSpec(
            str(script), runtime=Runtime.PROCESS, args=(str(docs), question), timeout_s=300
        )
        task = await node.run(spec)
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        value, _ = await node.objects.get(f"results/{task.id}")
        out = json.loads(bytes(value))
        assert out["answer"]
        assert out["sources"][0] == {"file": "mars.txt", "text": question}
        assert len(out["sources"]) == 3
        # A metadata filter keeps retrieval to one file; ingesting again adds nothing.
        spec = FunctionSpec(
            str(script),
            runtime=Runtime.PROCESS,
            args=(str(docs), question, "--only", "venus.txt"),
            timeout_s=300,
        )
        task = await node.run(spec)
        value, _ = await node.objects.get(f"results/{task.id}")
        assert {s["file"] for s in json.loads(bytes(value))["sources"]} == {"venus.txt"}
        assert node.services.vectors.request({"op": "count", "collection": "rag-docs"}) == 6
