"""tool_agent: a Python process agent that answers a question with a tool-calling loop
on the node's AI model (the local SmolLM2 by default), through `spear.agent`.

    spear run examples/tool_agent/tool_agent.py "What is 17 times 23?"
    spear logs ID --stream agent        # each step of the loop

The model sees the tools, asks for calls (JSON arguments), the agent runs them and sends
the results back, until the model answers in text. A 135M model rarely decides to use a
tool on its own, so the first turn requires one (`tool_choice`); larger models behind an
OpenAI-compatible endpoint (docs/models.md) can be left to choose (`TOOL_CHOICE=auto`).
The final answer is the task's result (`spear result ID`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from spear import agent

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
]


def run_tool(name: str, arguments: str) -> str:
    """Run one tool call; errors go back to the model as text, never crash the loop."""
    try:
        args = json.loads(arguments or "{}")
        a, b = int(args["a"]), int(args["b"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"error: bad arguments {arguments!r}: {exc}"
    if name == "multiply":
        return str(a * b)
    if name == "add":
        return str(a + b)
    return f"error: no tool {name!r}"


def main(question: str) -> str:
    model = os.environ.get("MODEL")  # None: the node's default model
    first_choice: Any = os.environ.get("TOOL_CHOICE") or {
        "type": "function",
        "function": {"name": "multiply"},
    }
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful assistant. Use the tools for math."},
        {"role": "user", "content": question},
    ]
    for step in range(int(os.environ.get("MAX_STEPS", "4"))):
        if step == 0:
            reply = agent.chat(
                messages, model=model, tools=TOOLS, tool_choice=first_choice,
                max_tokens=96, temperature=0,
            )
        else:  # the tools have answered: now the model writes its answer
            reply = agent.chat(messages, model=model, max_tokens=96, temperature=0)
        message = reply["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        if not calls:
            answer = (message.get("content") or "").strip()
            agent.log(f"step {step}: answer {answer!r}")
            return answer
        messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        for call in calls:
            fn = call["function"]
            result = run_tool(fn["name"], fn.get("arguments", "{}"))
            agent.log(f"step {step}: {fn['name']}({fn.get('arguments')}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
            # Small models follow a plain statement of the result better than a tool role.
            messages.append(
                {"role": "user", "content": f"The tool {fn['name']} returned {result}."}
            )
    return "no answer within the step limit"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: tool_agent.py QUESTION...", file=sys.stderr)
        sys.exit(64)
    answer = main(" ".join(sys.argv[1:]))
    print(answer)
    agent.set_result(answer.encode())
