"""Config files: YAML in, topologies out.

:func:`load` reads two kinds of file:

- the AFT reference inference config, unchanged (:class:`AftConfig`: ``model_name``,
  ``generation_params``, ``num_aggregation``, ``vllm_seed``, and ``engine_args`` passed to vLLM);
- topology files (:class:`TopologyConfig`): named engines (a tagged union on ``type``:
  :class:`VLLMEngineSpec`, :class:`OpenAIEngineSpec`, :class:`FakeEngineSpec`), named agents (role,
  engine, template, sampling, LoRA adapter), layers of agent names and the final agent.

Unknown, missing or ill-typed keys raise :class:`~aftlib.ConfigError` naming the file and the key path
(``agents.draft.sampling.temperature``); a misspelt key names the closest known one.

The modules behind this face: ``_converter`` (the one cattrs converter of every config file, training
configs and price tables included, and its errors), ``_engines`` (engine entries), ``_topology``
(topology files), ``_aft`` (the AFT reference config), ``_load`` (which kind a file is; :func:`load`
and :func:`parse`).
"""

from __future__ import annotations

from .._util import publish as _publish
from ._aft import AftConfig, GenerationParams
from ._engines import EngineSpec, FakeEngineSpec, OpenAIEngineSpec, RetryConfig, VLLMEngineSpec
from ._load import load, parse
from ._topology import (
    AgentConfig,
    EarlyExitConfig,
    ExtractorConfig,
    LayerConfig,
    ReferencesConfig,
    TopologyConfig,
)

__all__ = (
    "AftConfig",
    "AgentConfig",
    "EarlyExitConfig",
    "ExtractorConfig",
    "ReferencesConfig",
    "EngineSpec",
    "FakeEngineSpec",
    "GenerationParams",
    "LayerConfig",
    "OpenAIEngineSpec",
    "RetryConfig",
    "TopologyConfig",
    "VLLMEngineSpec",
    "load",
    "parse",
)

_publish(globals(), __name__)
