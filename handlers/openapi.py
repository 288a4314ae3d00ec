"""The OpenAPI document of the REST API."""

from __future__ import annotations

from handlers.base import APIHandler
from server.app import openapi


class OpenAPIHandler(APIHandler):
    async def get(self) -> None:
        """The OpenAPI 3 document, as is (tools expect it unwrapped); no credential needed."""
        self.finish(openapi.document())


default_handlers = [(r"/v1/openapi\.json", OpenAPIHandler)]
