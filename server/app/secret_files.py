"""Secrets a development node keeps in its data folder when none is configured."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from settings import Settings


def local_secret(settings: Settings, configured: str, name: str) -> str:
    """``configured`` if set; in production a start-up error; else ``<data-dir>/<name>``.

    The file is created once (mode 0600) so that restarts, the command line and the other
    local nodes of the same folder all use the same secret.
    """
    if configured:
        return configured
    if settings.production:
        raise SystemExit(f"NOTIFY_{name.upper()} is required when NOTIFY_ENV=production")
    path = Path(settings.data_dir) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another node of the same folder wrote it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
