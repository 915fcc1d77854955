"""The HTTP door beside gRPC: the Open Inference Protocol (`protocol`), `/munet/v1` (`tasks`,
`operations`), the dashboard and the OpenAPI page. Same process, engine, tokens and answers as gRPC;
errors keep their meaning (`errors`); bodies are bounded in size and idle time (`limits`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from munet_server import __version__
from munet_server.rest import errors, operations, protocol, tasks
from munet_server.rest.context import HttpContext
from munet_server.rest.dashboard import PAGE
from munet_server.rest.limits import BodyLimit
from munet_server.service import MunetService

DESCRIPTION = """HTTP/REST beside gRPC: the Open Inference Protocol (KServe v2) for serving, and `/munet/v1`
routes for what it lacks (tasks, operations, adding a task from a zipped ImageFolder, snapshots).
Every error answers `{"error": message, "code": NAME}` with NAME the gRPC code."""


def create_app(
    service: MunetService, admin_token: str = "", predict_token: str = "", read_only: str = ""
) -> FastAPI:
    """`read_only`: why changes are refused (a replica's source), or empty on a primary."""
    app = FastAPI(
        title="munet-server",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN; /docs below serves it from the package
        redoc_url=None,
    )
    app.state.munet = HttpContext(service, admin_token, predict_token, read_only)
    message_limit = service.config.max_message_mb << 20
    upload_limit = service.config.upload.max_bytes + (1 << 20)  # the zip plus multipart framing

    def limit_for(method: str, path: str) -> int:
        return upload_limit if method == "POST" and path.startswith("/munet/v1/tasks/") else message_limit

    app.add_middleware(BodyLimit, limit_for=limit_for, idle_seconds=service.config.upload.idle_seconds)
    errors.install(app)
    app.include_router(protocol.router)
    app.include_router(tasks.router)
    app.include_router(operations.router)
    _mount_docs(app)

    @app.get("/", include_in_schema=False)
    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return app


def _mount_docs(app: FastAPI) -> None:
    """The OpenAPI page at /docs, with Swagger UI's files from the swagger-ui-bundle package (offline)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="munet-server API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )
