"""The browser playground: one page (plain HTML, CSS and JS modules shipped with the package) with a panel per
service, calling only the public APIs a client would (OpenAI routes, TF Serving REST, SSE streams).

The page and its files need no API key and answer while models load: they hold nothing secret, and the page asks
for a key itself when an API call answers 401. `/playground/config.json` tells the page which services this
server has and where the vision panel finds TF Serving's REST API.
"""

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from ..config import ServerSettings

PLAYGROUND_PATH = "/playground"
# Only the page's own files are served, never this package's Python.
FILES = Path(__file__).parent / "static"
# The panels' order on the page; a service outside it gets no panel.
PANELS = ("asr", "tts", "translation", "imagegen", "vit")


def is_playground_path(path: str) -> bool:
    return path == PLAYGROUND_PATH or path.startswith(PLAYGROUND_PATH + "/")


def add_playground(app: FastAPI, service_names: list[str], settings: ServerSettings) -> None:
    """Serve the page at /playground, its files under /playground/, and the page's view of this server."""
    config = {
        "services": [name for name in PANELS if name in service_names],
        "tf_serving_url": settings.playground_tf_serving_url,
    }

    @app.get(PLAYGROUND_PATH, include_in_schema=False)
    async def playground_page():
        return FileResponse(FILES / "index.html")

    @app.get(PLAYGROUND_PATH + "/config.json", include_in_schema=False)
    async def playground_config():
        return config

    app.mount(PLAYGROUND_PATH, StaticFiles(directory=FILES), name="playground")


class CrossOriginPages:
    """CORS for the listed origins and, while the playground is on, for pages from this server's own host on
    another port (the platform's playground, on :8000, calling the ViT server's TF Serving API on :8501).

    Pure ASGI and outermost: a preflight carries no API key, so it must be answered before the key check."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
        self.allow_any = "*" in origins
        self.origins = set(origins)
        self.same_host = settings.playground
        self.cors = CORSMiddleware(
            app,
            allow_origins=["*"],
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["*"],
            max_age=600,
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._allowed(dict(scope["headers"])):
            return await self.cors(scope, receive, send)
        return await self.app(scope, receive, send)

    def _allowed(self, headers: dict[bytes, bytes]) -> bool:
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin:
            return False
        if self.allow_any or origin in self.origins:
            return True
        host = headers.get(b"host", b"").decode("latin-1")
        return self.same_host and bool(host) and urlsplit(origin).hostname == urlsplit(f"//{host}").hostname
