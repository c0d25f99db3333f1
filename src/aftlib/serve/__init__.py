"""Serve topologies as OpenAI-compatible chat models (the ``serve`` extra: Starlette and uvicorn).

:func:`create_app` builds the ASGI app over topologies by name; :func:`load_models` reads the config of
``aftlib serve`` (one topology file, or ``models: {NAME: FILE}`` with ``aliases``); :func:`serve` runs
an app under uvicorn with a shutdown grace period.
"""

from __future__ import annotations

from .._util import publish as _publish
from ._app import DEFAULT_MAX_BODY, create_app
from ._protocol import ApiError
from ._server import Models, load_models, read_api_keys, serve

__all__ = ("DEFAULT_MAX_BODY", "ApiError", "Models", "create_app", "load_models", "read_api_keys", "serve")

_publish(globals(), __name__)
