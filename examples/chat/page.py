"""Serves the chat page (chat.html beside this file) as an HTTP route's answer."""

from __future__ import annotations

from pathlib import Path

from spear import agent

page = (Path(__file__).parent / "chat.html").read_bytes()
agent.http_respond(page, headers={"Content-Type": "text/html; charset=utf-8"})
