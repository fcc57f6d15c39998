"""Pydantic's errors turned into `ConfigIssue`s: a path, a message, a line, a did-you-mean."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import ErrorDetails

from usher.config.base import _RULE, _Loc
from usher.config.model import Config
from usher.errors import ConfigIssue

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _issue(error: ErrorDetails, data: Mapping[str, Any], root: yaml.Node | None) -> ConfigIssue:
    loc = _clean_loc(error["loc"], data)
    names_key = error["type"] == "extra_forbidden" or error["loc"][-1:] == ("[key]",)
    return ConfigIssue(_render_path(loc), _message(error, loc), _line(root, loc, names_key))


def _clean_loc(loc: _Loc, data: object) -> _Loc:
    """The loc without pydantic's internal parts, found by following it through the data."""
    kept: list[str | int] = []
    current = data
    for position, part in enumerate(loc):
        found, child = _step(current, part)
        if found:
            current = child
        elif not (position == len(loc) - 1 and isinstance(current, Mapping) and part != "[key]"):
            # Not in the data: a union tag, "function-after[...]", "[key]" and the like;
            # only the last part of a loc may be absent, when it names a missing key.
            continue
        kept.append(part)
    return tuple(kept)


def _step(data: object, part: str | int) -> tuple[bool, object]:
    if isinstance(data, Mapping) and part in data:
        return True, data[part]
    if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
        return True, data[part]
    return False, None


def _render_path(loc: _Loc) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


# Other YAML files usher validates (e.g. `usher simulate` scenarios) name their paths alike.
render_path = _render_path


def _message(error: ErrorDetails, loc: _Loc) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == _RULE:
        return str(ctx["message"])
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "extra_forbidden":
        return "unknown key" + _suggestion(loc)
    if kind == "missing":
        return "required"
    if kind == "invalid_key":
        return "keys must be strings"
    if kind == "greater_than":
        return f"must be > {ctx['gt']:g}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']:g}"
    if kind == "less_than":
        return f"must be < {ctx['lt']:g}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']:g}"
    if kind == "literal_error":
        choices = re.split(r", | or ", str(ctx["expected"]))
        return "must be one of: " + ", ".join(choice.strip("'\"") for choice in choices)
    if kind == "union_tag_invalid":  # a discriminated union: sticky, discovery
        tags = str(ctx["expected_tags"]).replace("'", "")
        return f"{ctx['discriminator'].strip(chr(39))}: unknown {ctx['tag']!r} (one of: {tags})"
    if kind == "union_tag_not_found":
        return f"{ctx['discriminator'].strip(chr(39))}: required"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        count = ctx["min_length"]
        return f"needs at least {count} item" + ("" if count == 1 else "s")
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, not {_describe(error['input'])}"
    return error["msg"]


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _suggestion(loc: _Loc) -> str:
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: _Loc) -> type[BaseModel] | None:
    """The model class found at `loc` in the config, if any."""
    kind: Any = Config
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(part, str):
            field = kind.model_fields.get(part)
            if field is None:
                return None
            kind = field.annotation
        elif get_origin(kind) is list and isinstance(part, int):
            kind = get_args(kind)[0]
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        else:
            return None
    kind = _unwrap(kind)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _unwrap(kind: Any) -> Any:
    """`X` from `Annotated[X, ...]` and from `X | None`."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
        elif origin is Union or origin is UnionType:
            options = [arg for arg in get_args(kind) if arg is not type(None)]
            if len(options) != 1:
                return kind
            kind = options[0]
        else:
            return kind


def _line(root: yaml.Node | None, loc: _Loc, names_key: bool) -> int | None:
    """1-based line of the YAML node at `loc`: the key's own line when `names_key`, and the
    enclosing mapping's line when the last part of `loc` is missing."""
    if root is None:
        return None
    node = root
    for position, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            found = None
            for key, value in node.value:
                # Several equal keys: the last one is what the loader kept.
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    found = (key, value)
            if found is None:
                break
            if names_key and position == len(loc) - 1:
                return int(found[0].start_mark.line) + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


def _tidy(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Issues without repeats (a union reports once per member), in file order."""
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda issue: (issue.line is None, issue.line or 0))
