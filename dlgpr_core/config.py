"""Dotted ``key=value`` overrides and readable config errors, shared by every trainer.

Each training entry point reads one YAML file and lets the command line patch it with
``a.b=value`` items; the parsing rules and the error texts live here once, so the retriever
and the DQ-pilot trainer cannot drift apart on what an override means.

This is the lowest layer of `dlgpr_core`: it imports nothing from the other packages, so
any of them may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "ConfigError",
    "apply_overrides",
    "explain_validation_error",
    "known_keys",
    "parse_override",
    "set_dotted",
]


class ConfigError(ValueError):
    """A config that cannot be used, with the offending key or item named.

    A ValueError so that callers which only know "bad input" still catch it.
    """


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is YAML (``3e-4``, ``[A, B]``, ``false``), an empty
    value is None. Only the first ``=`` splits, so a value may contain ``=``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        reason = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"override {item[:200]!r}: the value is not valid YAML ({reason})"
        ) from err
    except RecursionError:  # PyYAML parses nesting recursively
        raise ConfigError(f"override {item[:60]!r}...: the value nests too deeply") from None
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key="a.b.c"``, creating missing (or null)
    intermediate mappings; a path through anything else (a number, a list, a string) is an
    error rather than a silent replacement of that value."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {key!r}: empty key segment")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise ConfigError(
                f"override {key!r}: {prefix!r} is not a mapping (it is {type(child).__name__})"
            )
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` items in order (a later item wins) and return `data` (changed in
    place)."""
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return data


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, looking inside ``X | None`` and ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def known_keys(model: type[BaseModel], parent: Sequence[int | str]) -> list[str]:
    """The field names valid at `parent` (a pydantic error location) below `model`; empty
    where the location is not inside a model."""
    current: type[BaseModel] | None = model
    for part in parent:
        if isinstance(part, int):  # a list index: stay on the element's model
            continue
        field = current.model_fields.get(part) if current is not None else None
        current = _submodel(field.annotation) if field is not None else None
        if current is None:
            return []
    return list(current.model_fields) if current is not None else []


def explain_validation_error(err: ValidationError, model: type[BaseModel], header: str) -> str:
    """One line per bad key under `header`; an unknown key gets the closest known key of its
    section as a did-you-mean, because most unknown keys are typos."""
    lines = [header]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            known = known_keys(model, e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"  unknown key {loc!r}{hint}")
        else:
            lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)
