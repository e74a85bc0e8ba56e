"""`spear dashboard`: the URL of the dashboard a daemon on this data dir serves.

    spear dashboard [--sms] [--open] [--data-dir DIR] [--json]

`spear serve` writes its HTTP address to DATA/spearlet.http (the SMS: DATA/sms.http); this
reads it, so the URL is found whatever port the daemon picked (docs/dashboard.md).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from spear.cli._common import ConfigOpt, DataDirOpt, JsonOpt, load_settings
from spear.errors import Unavailable

app = typer.Typer()


@app.command(help="Print the URL of the dashboard (and /metrics) of the daemon on this data dir.")
def dashboard(
    sms: Annotated[bool, typer.Option("--sms", help="The SMS's dashboard, not a node's.")] = False,
    open_: Annotated[bool, typer.Option("--open", help="Also open it in a browser.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from spear.web import read_http_address

    settings = load_settings(data_dir, config)
    role = "sms" if sms else "spearlet"
    url = read_http_address(settings.data_dir, role)
    if url is None:
        what = "SMS (spear serve --role sms)" if sms else "node (spear serve)"
        raise Unavailable(
            f"no dashboard on {settings.data_dir}: "
            f"no {what} serves there, or it runs with --http off"
        )
    from spear.transport.auth import read_owner_token

    # The page needs a token: the link carries the owner's (this user can read it), which
    # the browser keeps in a cookie; Prometheus sends it as a bearer token (docs/security.md).
    token = settings.token or read_owner_token(settings.data_dir)
    link = url + "/" + (f"?token={token}" if token else "")
    if as_json:
        doc = {"url": url, "metrics": url + "/metrics", "role": role, "link": link}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(link + "\n")
    if open_:
        import webbrowser

        webbrowser.open(link)
