"""Static files: static/, and the browser library served from its npm package (clients/js)."""

from __future__ import annotations

from pathlib import Path

from tornado import web

ROOT = Path(__file__).resolve().parent.parent
# One source: /static/notify-client.js is the package's own file, never a copy that drifts.
PACKAGED = {"notify-client.js": str(ROOT / "clients" / "js" / "notify-client.js")}


class StaticFiles(web.StaticFileHandler):
    """Tornado's static file handler, with the packaged files mapped in."""

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        """The package's file for a packaged name, else the file under static/."""
        return PACKAGED.get(path) or super().get_absolute_path(root, path)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        """Packaged files live outside static/: allow exactly those."""
        if absolute_path in PACKAGED.values():
            return absolute_path
        return super().validate_absolute_path(root, absolute_path)
