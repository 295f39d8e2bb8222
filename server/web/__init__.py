"""The market's web page (``lwm server start --web HOST:PORT``): catalogue and admin area.

``build_web_app`` makes the Starlette app over a ``Market``; ``start_web`` serves it with
uvicorn on the market server's own event loop (``server.app`` calls it after gRPC starts).
"""

from server.web.app import build_web_app
from server.web.security import WebLimits
from server.web.serve import WebServer, start_web

__all__ = ["WebLimits", "WebServer", "build_web_app", "start_web"]
