"""The base of every config model, and the plumbing of the rules checked on raw input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

# Issues found by `_rules` travel through pydantic under this error type, message intact.
_RULE = "usher_rule"
_Loc = tuple[str | int, ...]
_Problem = tuple[_Loc, str]


class _Model(BaseModel):
    """Base of every config model: frozen, strict about keys, and checked by `_rules`.

    Rules that look at several fields are checked on the raw input, before and whatever the
    outcome of pydantic's own field validation: an after-validator would only run once every
    field is valid, hiding, say, an unknown pool behind a typo elsewhere in the file.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        """Problems that involve several fields, with their location inside this model."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _check_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        problems = cls._rules(data) if isinstance(data, Mapping) else []
        try:
            model = handler(data)
        except ValidationError as exc:
            if not problems:
                raise
            details = [_reraisable(error) for error in exc.errors()]
        else:
            if not problems:
                return model
            details = []
        for loc, message in problems:
            details.append({"type": _rule_error(message), "loc": loc, "input": data})
        raise ValidationError.from_exception_data(cls.__name__, details)


def _rule_error(message: str) -> PydanticCustomError:
    # The message goes in the context, not the template, so that braces in it stay as they are.
    return PydanticCustomError(_RULE, "{message}", {"message": message})


def _reraisable(error: ErrorDetails) -> InitErrorDetails:
    detail: InitErrorDetails = {"type": error["type"], "loc": error["loc"], "input": error["input"]}
    if error["type"] == _RULE:
        detail["type"] = _rule_error(error["msg"])
    elif "ctx" in error:
        detail["ctx"] = error["ctx"]
    return detail


def _get(data: object, key: str) -> Any:
    """A field of raw input or of an already built model; None when absent."""
    if isinstance(data, Mapping):
        return data.get(key)
    if isinstance(data, BaseModel):
        return getattr(data, key, None)
    return None


def _items(data: object) -> list[tuple[int, Any]]:
    return list(enumerate(data)) if isinstance(data, list | tuple) else []
