"""Typed config sections: dataclasses validated by pydantic, with one-line errors that name the key.

A section is a plain dataclass whose fields carry their types and ranges
(`Annotated[int, Field(ge=1)]`). `validate_section` checks a mapping against it before any data is
read: a wrong type, an out-of-range value or an unknown key raises `ConfigError` naming
`source: section.key` and the rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from rtgen.core.errors import ConfigError

_ADAPTERS: dict[type, TypeAdapter] = {}


def _adapter(cls: type) -> TypeAdapter:
    if cls not in _ADAPTERS:
        if "__pydantic_config__" not in cls.__dict__:
            cls.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def _describe(error: dict, where: str) -> str:
    loc = ".".join(str(p) for p in (where, *error["loc"]) if p != "")
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{loc}: unknown key"
    msg = error["msg"].removeprefix("Value error, ")
    if error["loc"] and "input" in error:
        return f"{loc}: {msg} (got {error['input']!r})"
    return f"{loc}: {msg}"


def _check_mapping(cls: type, values: Any, where: str, source: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(source, f"{where} must be a mapping of keys to values, got {type(values).__name__} {values!r}")
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise ConfigError(source, f"{where}: key {odd[0]!r} is not a name (known keys: "
                                  f"{', '.join(sorted(f.name for f in dataclasses.fields(cls)))})")


def _error(cls: type, errors: list[dict], where: str, source: str) -> ConfigError:
    known = sorted(f.name for f in dataclasses.fields(cls))
    text = "; ".join(_describe(er, where) for er in errors[:3])
    if any(er["type"] in ("unexpected_keyword_argument", "extra_forbidden") for er in errors):
        text += f" (known keys: {', '.join(known)})"
    return ConfigError(source, text)


def validate_section(cls: type, values: Any, where: str, source: str = "config"):
    """`values` (a mapping) -> an instance of the dataclass `cls`, or ConfigError naming the key."""
    if values is None:
        values = {}
    if dataclasses.is_dataclass(values) and isinstance(values, cls):
        return values
    _check_mapping(cls, values, where, source)
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as e:
        raise _error(cls, e.errors(), where, source) from None


def check_keys(cls: type, values: Any, where: str, source: str = "config") -> None:
    """What can be checked of a section that something else completes (a model's architecture, some
    of whose keys the task sets from its data): unknown keys, and the type and range of each key
    given. Missing keys and the checks that combine keys (`__post_init__`) are left to
    `validate_section` on the completed values."""
    if values is None:
        values = {}
    _check_mapping(cls, values, where, source)
    try:
        _adapter(cls).validate_python(values)
    except ValidationError as e:
        errors = [er for er in e.errors() if er["loc"] and er["type"] != "missing"]
        if errors:
            raise _error(cls, errors, where, source) from None
