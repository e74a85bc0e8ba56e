"""Builds a node's triggers: its route table (settings and KV), the route API, and the
catch-all routes that serve them, for `serving` to add to the app."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from spear.config import Settings
    from spear.node.cluster import ClusterNode
    from spear.node.inprocess import InProcessNode


async def trigger_routes(api: InProcessNode | ClusterNode, settings: Settings) -> list[BaseRoute]:
    from spear.transport.auth import TokenStore
    from spear.web._route_api import route_api
    from spear.web._routes import RouteTable, routes_from_settings
    from spear.web._triggers import Triggers

    table = RouteTable(api.node.kv, routes_from_settings(settings.extra.get("routes", {})))
    await table.load()
    tokens = TokenStore(settings.data_dir)
    return route_api(table, Triggers(api, table, tokens), tokens)
