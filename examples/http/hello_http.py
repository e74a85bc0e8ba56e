"""An HTTP agent in Python (a process agent): the request from `agent.http_request()`,
the response through `agent.http_respond` / `http_start` + `sse` (docs/triggers.md).

    spear route add /py examples/http/hello_http.py --public
    curl -s "$(spear dashboard)py?name=you"
    curl -sN "$(spear dashboard)py?count=3"      # server-sent events, one at a time
"""

from __future__ import annotations

import json
import time

from spear import agent

request = agent.http_request()
count = request.query.get("count")
if count is not None:
    agent.http_start(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    for i in range(1, int(count) + 1):
        agent.sse(json.dumps({"n": i}), event="count")
        time.sleep(0.05)
    agent.sse("done", event="end")
else:
    answer = {
        "hello": request.query.get("name", "web"),
        "method": request.method,
        "path": request.path,
        "body": request.text(),
        "request_id": request.request_id,
    }
    agent.http_respond(json.dumps(answer), headers={"Content-Type": "application/json"})
