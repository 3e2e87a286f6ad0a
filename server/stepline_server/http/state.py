"""What the routes share: the engine, the dispatcher, the metrics and the templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.templating import Jinja2Templates

from stepline_server.auth import Keyring
from stepline_server.http.metrics import Metrics

if TYPE_CHECKING:
    from stepline_server.bridge.bridge import Bridge
    from stepline_server.dispatch.dispatcher import Dispatcher
    from stepline_server.engine import Engine


@dataclass(frozen=True, slots=True)
class Services:
    engine: Engine
    dispatcher: Dispatcher
    metrics: Metrics
    templates: Jinja2Templates
    keyring: Keyring
    bridge: Bridge | None = None  # the apps page's Sync button; None: no bridge (tests)


def services(request: Request) -> Services:
    """The app's Services (set by create_app on `app.state`)."""
    found: Services = request.app.state.services
    return found
