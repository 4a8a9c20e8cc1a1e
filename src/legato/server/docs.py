"""The OpenAPI document and a browsable page for it, from assets shipped in the package (no CDN)."""

from __future__ import annotations

from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from legato.server.openapi import build

SWAGGER_DIR = Path(str(swagger_ui_path))
_DOCUMENT = orjson.dumps(build())

# When the server wants a token, the page asks for it once and sends it with every request.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Legato API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>
async function start() {
  let token = sessionStorage.getItem("legato-token") || "";
  const auth = () => (token ? {Authorization: "Bearer " + token} : {});
  let answer = await fetch("/openapi.json", {headers: auth()});
  while (answer.status === 401) {
    token = prompt("This Legato server needs its API token:") || "";
    if (!token) return;
    answer = await fetch("/openapi.json", {headers: auth()});
  }
  sessionStorage.setItem("legato-token", token);
  SwaggerUIBundle({
    spec: await answer.json(),
    dom_id: "#ui",
    requestInterceptor: (req) => { Object.assign(req.headers, auth()); return req; },
  });
}
start();
</script></body></html>
"""


async def openapi(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)
