"""Structured output: an answer that must be JSON, or JSON matching a schema (``response_format``).

A :class:`ResponseFormat` rides on :class:`~aftlib.SamplingParams`. Engines that can constrain decoding
(:attr:`Engine.supports_structured_outputs <aftlib.engines.Engine.supports_structured_outputs>`: vLLM's
structured outputs) enforce it while generating; every answer is also checked after generation, so an
answer cut off by ``max_tokens`` or written by an engine that cannot enforce the format is an error
(:class:`StructuredOutputError`), never a silent free-text answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from attrs import field, frozen

from ._errors import ConfigError, EngineError

__all__ = ("ResponseFormat", "StructuredOutputError", "as_response_format")

FormatType = Literal["json_object", "json_schema"]


class StructuredOutputError(EngineError):
    """An answer is not the JSON its request's ``response_format`` asks for."""


def _check_type(_: object, __: object, value: str) -> None:
    if value not in ("json_object", "json_schema"):
        raise ConfigError(
            f"response_format.type is 'json_object' or 'json_schema' ('text' is no format), got {value!r}",
            path="response_format.type",
        )


def _jsonschema() -> Any:
    import jsonschema  # a dependency of aftlib, imported when a schema is checked

    return jsonschema


@frozen
class ResponseFormat:
    """What the answer must be: any JSON object, or JSON valid against a schema.

    Attributes:
        type: ``"json_object"`` or ``"json_schema"``.
        schema_json: The JSON schema, as compact JSON text in its own key order (``"{}"`` for
            ``json_object``): the request stays hashable, and a constrained answer writes the
            properties in the order the schema lists them (reasoning before the answer, say).
        name: The schema's name (OpenAI's ``json_schema.name``).
    """

    type: FormatType = field(validator=_check_type)
    schema_json: str = "{}"
    name: str = "response"

    @property
    def schema(self) -> dict[str, Any]:
        """The schema, as a mapping (empty for ``json_object``)."""
        value: dict[str, Any] = json.loads(self.schema_json)
        return value

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any], *, name: str = "response") -> ResponseFormat:
        """A format that requires JSON valid against ``schema`` (checked to be a JSON schema).

        Raises:
            ConfigError: ``schema`` is not a valid JSON schema (the error names the schema keyword).
        """
        if not isinstance(schema, Mapping):
            raise ConfigError(
                f"a JSON schema is an object, got {type(schema).__name__}", path="response_format.json_schema"
            )
        jsonschema = _jsonschema()
        try:
            jsonschema.validators.validator_for(dict(schema)).check_schema(dict(schema))
        except jsonschema.SchemaError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise ConfigError(
                f"not a JSON schema: {exc.message}" + (f" (at {where})" if where else ""),
                path="response_format.json_schema.schema",
            ) from None
        # the schema's own key order: under constrained decoding, properties are written in that order
        return cls("json_schema", json.dumps(dict(schema), separators=(",", ":")), name)

    def problem(self, text: str) -> str | None:
        """Why ``text`` does not have this format, or None when it does."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"not JSON ({exc})"
        if self.type == "json_object":
            return None if isinstance(value, dict) else f"JSON, but a {type(value).__name__}, not an object"
        jsonschema = _jsonschema()
        validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return f"does not match the schema {self.name!r} at {where}: {error.message}"

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``response_format`` object."""
        if self.type == "json_object":
            return {"type": "json_object"}
        spec = {"name": self.name, "schema": self.schema, "strict": True}
        return {"type": "json_schema", "json_schema": spec}


def as_response_format(value: Any) -> ResponseFormat | None:
    """A :class:`ResponseFormat` from itself, None, or OpenAI's ``response_format`` object.

    ``{"type": "text"}`` is no format (None).

    Raises:
        ConfigError: The object is malformed or its schema is not a JSON schema (names the key).
    """
    if value is None or isinstance(value, ResponseFormat):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"response_format is an object such as {{'type': 'json_object'}}, got {type(value).__name__}",
            path="response_format",
        )
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise ConfigError(
                "a json_schema response_format needs 'json_schema': {'name': ..., 'schema': {...}}",
                path="response_format.json_schema",
            )
        name = spec.get("name", "response")
        if not isinstance(name, str) or not name:
            path = "response_format.json_schema.name"
            raise ConfigError("json_schema.name is a non-empty string", path=path)
        return ResponseFormat.json_schema(spec["schema"], name=name)
    raise ConfigError(
        f"response_format.type is 'text', 'json_object' or 'json_schema', got {kind!r}",
        path="response_format.type",
    )
