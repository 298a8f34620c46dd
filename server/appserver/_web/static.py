"""
The static site: the pages (html/) at C{/}, the browser client (js/) at
C{/js/}, jQuery at C{/vendor/}, and C{/appserver-config.js}, which tells the
pages where the Ajax and WebSocket sites are.

Hardened over a bare C{File}: no directory listings, no dotfiles, 404s that
name no file-system path, explicit content types and caching headers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from appserver._core.envelope import encode

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["SafeFile", "ClientDirectory", "build_static_resource", "find_web_directory", "ConfigScript"]

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".map": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}


#: The 404 page: styled like the demo pages but self-contained (a site
#: started with --html may have no style sheet), naming no path.
_NOT_FOUND_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Page not found</title>
<link rel="icon" href="data:,">
<style>
body { margin: 0; background: #f4f6fa; color: #1d2330; line-height: 1.45;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { background: #1d2330; color: #fff; padding: 0.9rem 1.5rem; }
header p { margin: 0; font-size: 1.25rem; font-weight: 600; }
main { max-width: 40rem; margin: 2rem auto; padding: 1.25rem 1.5rem; background: #fff;
       border: 1px solid #d9dee8; border-radius: 8px; }
@media (max-width: 42rem) { main { margin: 1rem 0.6rem; } }
h1 { margin: 0 0 0.5rem; font-size: 1.3rem; }
a { color: #2457c5; }
</style>
</head>
<body>
<header><p>appserver</p></header>
<main>
<h1>404: page not found</h1>
<p>Nothing is served at this address. Check the link, or go back to <a href="/">the start page</a>.</p>
</main>
</body>
</html>
"""


class _NotFound(Resource):
    """
    A 404 that says nothing about the server's files.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-store")
        if request.method == b"HEAD":
            return b""
        return _NOT_FOUND_PAGE


class SafeFile(File):
    """
    A C{File} that never lists a directory, never serves a dotfile, and
    answers every miss with the same path-free 404.
    """

    contentTypes = _CONTENT_TYPES
    defaultType = "application/octet-stream"
    # File documents both as any Resource (it only renders them), but mypy
    # infers their types from the deprecated error pages File assigns.
    childNotFound = _NotFound()  # type: ignore[assignment]
    forbidden = _NotFound()  # type: ignore[assignment]

    def directoryListing(self) -> Resource:
        return self.childNotFound

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path.startswith(b".") or b"\x00" in path:
            return self.childNotFound
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"same-origin")
        if self.path.endswith((".html", ".htm")) or self.isdir():
            # Pages change with deployments: always revalidate (cheap: 304).
            request.setHeader(b"Cache-Control", b"no-cache")
        else:
            request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return super().render_GET(request)


class ClientDirectory(SafeFile):
    """
    C{/js/}: the browser client's files and nothing else. A checkout's
    C{js/} also holds the npm package's tooling (C{node_modules/},
    C{package.json}, the build script): none of it is for browsers.
    Served: the C{.js} scripts at the top (the plain-script build) and the ES
    module sources under C{src/} (for C{<script type="module">}).
    """

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path != b"src" and not path.endswith(b".js"):
            return self.childNotFound
        return super().getChild(path, request)

    def createSimilarFile(self, path: str) -> File:
        # Below the top (src/), the usual safe file.
        similar = SafeFile(path, self.defaultType, self.ignoredExts, self.registry)
        similar.processors = self.processors
        similar.indexNames = self.indexNames[:]
        similar.childNotFound = self.childNotFound
        return similar


class ConfigScript(Resource):
    """
    C{/appserver-config.js}: C{window.AppServerConfig = {wsUrl, ajaxUrl}}
    for the host the page was loaded from and the ports this server really
    listens on (with C{tcp:0} they are only known at run time).
    """

    isLeaf = True

    def __init__(self, urls: Callable[[Request], dict[str, str]]) -> None:
        super().__init__()
        self.urls = urls

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/javascript; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return b"window.AppServerConfig = " + encode(self.urls(request)) + b";\n"


def find_web_directory(name: str, configured: str | None) -> Path:
    """
    Where C{html} or C{js} lives: the option if given, else the checkout
    this package runs from, else the copy installed under
    C{sys.prefix/share/appserver}.

    @raise ValueError: naming the directories tried.
    """
    if configured:
        path = Path(configured).expanduser().resolve()
        if not path.is_dir():
            what = "pages" if name == "html" else "scripts"
            raise ValueError(f"--{name} {configured}: no such directory; pass a directory of {what}, "
                             f"or leave --{name} out for the bundled ones")
        return path
    candidates = [
        Path(__file__).resolve().parents[3] / name,
        Path(sys.prefix) / "share" / "appserver" / name,
        Path(os.environ.get("APPSERVER_SHARE", "/usr/local/share/appserver")) / name,
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ValueError(f"cannot find the {name}/ directory (tried {', '.join(map(str, candidates))}); "
                     f"pass --{name} DIR")


def _jquery_directory() -> Path:
    import xstatic.pkg.jquery as xjquery
    return Path(xjquery.BASE_DIR)


def build_static_resource(runtime: "Runtime", urls: Callable[[Request], dict[str, str]]) -> Resource:
    """
    The static site's tree.
    """
    settings = runtime.settings
    root = SafeFile(str(find_web_directory("html", settings.html)))
    root.putChild(b"js", ClientDirectory(str(find_web_directory("js", settings.js))))
    root.putChild(b"vendor", SafeFile(str(_jquery_directory())))
    root.putChild(b"appserver-config.js", ConfigScript(urls))
    return root
