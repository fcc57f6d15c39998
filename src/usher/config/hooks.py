"""`hooks:` of listeners and routes: the user's classes by import path (usher.hooks).

Validation imports each class afresh (an edited module takes effect on reload) and checks it
defines at least one phase; usher builds the instances when it builds the routes
(usher.http.hook_phases), since an instance is not config and does not travel to workers."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from pydantic import AfterValidator, Discriminator, Field, Tag, WithJsonSchema

from usher.balancing import custom
from usher.config.base import _Model
from usher.config.defaults import DEFAULT_HOOK_ERROR_STATUS, DEFAULT_HOOK_TIMEOUT
from usher.config.values import Duration

PHASES = ("on_request", "select", "on_response", "on_log")


def hook_class(path: str, *, fresh: bool = False) -> type:
    """The hook class named by `path`; ValueError saying what is wrong with it."""
    found = custom.resolve(path, fresh=fresh)
    if not isinstance(found, type):
        raise ValueError(f"{path}: is not a class but {type(found).__name__}")
    if not any(callable(getattr(found, phase, None)) for phase in PHASES):
        raise ValueError(f"{path}: defines no hook phase ({', '.join(PHASES)})")
    if inspect.iscoroutinefunction(getattr(found, "on_response", None)):
        # The head is on its way when it runs: nothing may hold the backend's answer.
        raise ValueError(f"{path}: on_response must be a plain def, not async def")
    return found


def _hook_path(value: str) -> str:
    hook_class(value, fresh=True)  # its ValueError names the problem
    return value


_HookPath = Annotated[
    str,
    AfterValidator(_hook_path),
    WithJsonSchema({"type": "string", "pattern": f"^{custom.IMPORT_PATH.pattern}$"}),
]


class HookSpec(_Model):
    """A hook with its options, budget and failure answer."""

    use: _HookPath = Field(
        description="The hook class, `package.module:Name` (see `python_path`); built once per "
        "load as `Name(options)`."
    )
    options: dict[str, Any] = Field(
        default={}, description="Passed to the class's constructor, as a dict."
    )
    timeout: Duration = Field(
        default=DEFAULT_HOOK_TIMEOUT,
        gt=0,
        description="Longest an `async def` phase of this hook may take; beyond it the "
        "request is answered `error_status`.",
    )
    error_status: int = Field(
        default=DEFAULT_HOOK_ERROR_STATUS,
        ge=500,
        le=599,
        description="The status answered when this hook raises, returns something it may not, "
        "or overruns `timeout`.",
    )


def _form(value: Any) -> str:
    return "path" if isinstance(value, str) else "spec"


# The text form or the mapping, told apart up front so an error names only the one written.
_HookEntry = Annotated[
    Annotated[_HookPath, Tag("path")] | Annotated[HookSpec, Tag("spec")], Discriminator(_form)
]
_HOOKS_DESCRIPTION = (
    'Hooks run on each request, in order: `"package.module:Name"` or `{use: ..., options: '
    "{...}}` (docs/hooks.md)."
)


def spec_of(entry: str | HookSpec) -> HookSpec:
    """A `hooks:` entry with its defaults spelled out."""
    return entry if isinstance(entry, HookSpec) else HookSpec.model_construct(use=entry)
