"""The chat page's agent: a WebSocket route's task (docs/triggers.md). Each message from
the browser is a question; the answer streams back from the node's model (the local
SmolLM2 by default, docs/models.md) one message per piece, as JSON:
{"token": "..."} ... then {"done": true}. Questions are answered in turn, remembering the
conversation, until the browser closes the socket.

    spear route add /chat/ws examples/chat/chat_agent.py --websocket --public
    spear route add /chat examples/chat/page.py --public --method GET
    open "$(spear dashboard)chat"
"""

from __future__ import annotations

import json
import os

from spear import agent

MAX_TOKENS = int(os.environ.get("CHAT_MAX_TOKENS", "64"))
history = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
for message in agent.messages():
    question = message.decode("utf-8", errors="replace").strip()
    if not question:
        continue
    history.append({"role": "user", "content": question})
    answer = []
    with agent.chat_stream(history, max_tokens=MAX_TOKENS, temperature=0) as stream:
        for piece in stream:
            answer.append(piece)
            agent.send(json.dumps({"token": piece}))
    history.append({"role": "assistant", "content": "".join(answer)})
    agent.send(json.dumps({"done": True}))
