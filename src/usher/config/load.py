"""Loading: YAML 1.2 (booleans only true/false), duplicate keys, then validation whole."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from usher.balancing import custom as custom_algorithms
from usher.balancing import registered_names
from usher.config.base import _Loc
from usher.config.issues import _describe, _issue, _render_path, _tidy
from usher.config.model import Config
from usher.errors import ConfigError, ConfigIssue


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false. In YAML 1.1 `on`, `off`, `yes` and `no`
    are booleans too, which would turn the key `retries: {on: [502]}` into `True`."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate a config given as YAML text; raise ConfigError listing every problem."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            duplicates = _duplicate_keys(root, (), set()) if root is not None else []
            if any(issue.message == _RECURSIVE for issue in duplicates):
                raise ConfigError(duplicates, source)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc)], source) from None
    if data is None:
        raise ConfigError([ConfigIssue("", "the config is empty")], source)
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        issue = ConfigIssue("", f"the config must be a mapping, not {_describe(data)}", line)
        raise ConfigError([issue], source)
    issues = duplicates
    _resolve_python_path(data, source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues = issues + [_issue(error, data, root) for error in exc.errors()]
    if issues:
        raise ConfigError(_tidy(issues), source)
    return config


def _resolve_python_path(data: dict[str, Any], source: str) -> None:
    """Make `python_path` entries absolute (relative to the config file) and importable before
    validation, which imports the custom algorithms; and start a fresh load of those."""
    custom_algorithms.begin_load()
    dirs = data.get("python_path")
    if not isinstance(dirs, list):
        return  # reported by validation
    base = Path(source).parent
    data["python_path"] = [os.path.abspath(base / d) if isinstance(d, str) else d for d in dirs]
    custom_algorithms.add_python_path(
        d for d in data["python_path"] if isinstance(d, str) and os.path.isdir(d)
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {reason}")], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue("", f"{path} is not UTF-8 text")], str(path)) from None
    return parse_config(text, str(path))


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file."""
    schema = Config.model_json_schema()
    # Algorithms register at import time, so the list is filled in here rather than frozen in.
    algorithm = schema["$defs"]["PoolConfig"]["properties"]["algorithm"]
    algorithm["anyOf"] = [
        {"enum": registered_names()},
        {"pattern": f"^{custom_algorithms.IMPORT_PATH.pattern}$"},
    ]
    return schema


_RECURSIVE = "an alias refers to its own anchor (recursive data)"


def _duplicate_keys(node: yaml.Node, loc: _Loc, open_nodes: set[int]) -> list[ConfigIssue]:
    """YAML loaders keep the last of two equal keys silently; a config should not have any.
    Also reports recursive aliases, which no config needs and which nothing could walk."""
    line = int(node.start_mark.line) + 1
    if id(node) in open_nodes:
        return [ConfigIssue(_render_path(loc), _RECURSIVE, line)]
    issues: list[ConfigIssue] = []
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen and key.value != "<<":
                path = _render_path((*loc, key.value))
                issues.append(ConfigIssue(path, "duplicate key", int(key.start_mark.line) + 1))
            seen.add(key.value)
            issues += _duplicate_keys(value, (*loc, key.value), open_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            issues += _duplicate_keys(item, (*loc, index), open_nodes)
    open_nodes.discard(id(node))
    return issues


def _yaml_issue(exc: yaml.YAMLError) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        message = f"invalid YAML: {exc.problem}"
        if exc.context:
            message += f" ({exc.context})"
        return ConfigIssue("", message, int(exc.problem_mark.line) + 1)
    return ConfigIssue("", f"invalid YAML: {exc}")
