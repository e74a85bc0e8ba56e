"""rag: answer a question from a folder of text, with retrieval on the node's vector store
and embeddings and chat from the node's model (the local SmolLM2 by default).

    spear run examples/rag/rag.py examples/rag/docs "Which planet has the tallest volcano?"
    spear result ID                     # {"answer": ..., "sources": [...]}
    spear vec query rag-docs --vector ...   # the collection stays for later questions

Ingest: every .txt and .md file is cut into paragraphs, each embedded and upserted into
the collection `rag-<folder name>` with its file as metadata (an unchanged paragraph is
upserted again under the same id: ingesting twice changes nothing). Answer: the question
is embedded, the 3 nearest paragraphs are retrieved and given to the model with the
question. With `--only FILE`, retrieval is limited to one file (a metadata filter).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from spear import agent

TOP_K = 3


def paragraphs(folder: Path) -> list[tuple[str, str]]:
    """(file name, paragraph) for every paragraph of the folder's text files."""
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".txt", ".md"):
            for part in path.read_text().split("\n\n"):
                if part.strip():
                    out.append((path.name, " ".join(part.split())))
    return out


def ingest(a: agent.Agent, collection: str, folder: Path) -> int:
    parts = paragraphs(folder)
    if not parts:
        raise SystemExit(f"no .txt or .md files in {folder}")
    vectors = a.embed([text for _, text in parts])
    a.vectors("create", collection, dim=len(vectors[0]))
    records = [
        {
            "id": hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()[:16],
            "vector": vector,
            "metadata": {"file": name},
            "text": text,
        }
        for (name, text), vector in zip(parts, vectors, strict=True)
    ]
    a.vectors("upsert", collection, records=records)
    return len(records)


def retrieve(a: agent.Agent, collection: str, question: str, only: str | None) -> list[dict]:
    vector = a.embed(question)[0]
    where = {"file": only} if only else None
    return list(a.vectors("query", collection, vector=vector, k=TOP_K, filter=where))


def main(argv: list[str]) -> int:
    only = None
    if "--only" in argv:
        i = argv.index("--only")
        only, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
    if len(argv) < 2:
        print("usage: rag.py FOLDER QUESTION... [--only FILE]", file=sys.stderr)
        return 64
    folder, question = Path(argv[0]), " ".join(argv[1:])
    a = agent.Agent()
    collection = f"rag-{folder.resolve().name}"
    count = ingest(a, collection, folder)
    hits = retrieve(a, collection, question, only)
    a.log(f"ingested {count} paragraphs; retrieved {[h['metadata']['file'] for h in hits]}")
    passages = "\n".join(f"- {h['text']}" for h in hits)
    reply = a.chat(
        [
            {"role": "system", "content": "Answer in one sentence from the passages."},
            {"role": "user", "content": f"Passages:\n{passages}\n\nQuestion: {question}"},
        ],
        max_tokens=64,
        temperature=0,
    )
    answer = (reply["choices"][0]["message"]["content"] or "").strip()
    print(answer)
    sources = [{"file": h["metadata"]["file"], "text": h["text"]} for h in hits]
    a.set_result(json.dumps({"answer": answer, "sources": sources}).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
