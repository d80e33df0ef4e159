"""Shared model bases."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


def _numbers_only(annotation: Any) -> tuple[bool, bool]:
    """(takes a number, takes true/false) for a field's annotation, through Optional/Union/Annotated/list."""
    if annotation is bool:
        return False, True
    if annotation in (int, float):
        return True, False
    if annotation is Any or isinstance(annotation, (str, typing.ForwardRef)):
        return False, True  # anything goes (or not known yet): not ours to refuse
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numbers_only(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        number = takes_bool = False
        for arg in typing.get_args(annotation):
            n, b = _numbers_only(arg)
            number, takes_bool = number or n, takes_bool or b
        return number, takes_bool
    return False, False


def _item_annotation(annotation: Any) -> Any:
    """The item type of list[X] (also inside Optional), else None."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        items = [_item_annotation(a) for a in typing.get_args(annotation)]
        return next((i for i in items if i is not None), None)
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def _refuses_bool(annotation: Any) -> bool:
    number, takes_bool = _numbers_only(annotation)
    return number and not takes_bool


class Params(BaseModel):
    """Request params: unknown keys are errors, so a typo never silently does nothing.

    Numbers are numbers: `true`/`false` where a number goes (`seed: true`, `width: true`) is a
    validation_error. (pydantic's lax mode would read them as 1 and 0; JSON has no such thing.)
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if type(value) is bool:
            if info.field_name is not None and _refuses_bool(cls.model_fields[info.field_name].annotation):
                raise ValueError(f"expected a number, got {str(value).lower()}")
        elif type(value) is list and any(type(v) is bool for v in value) and info.field_name is not None:
            item = _item_annotation(cls.model_fields[info.field_name].annotation)
            if item is not None and _refuses_bool(item):
                raise ValueError(f"expected numbers, got {str(next(v for v in value if type(v) is bool)).lower()} in the list")
        return value


class Result(BaseModel):
    """A method's answer. Every key the worker sends is declared; a key the model does not know still
    passes through (so a newer worker never breaks an older host's reader)."""

    model_config = ConfigDict(extra="allow", defer_build=True)


class Replica(Result):
    """Cluster mode: where a job ran."""

    id: str | int
    node: str | None = Field(description="Ray node id, hex")
    device: str | None


class JobResult(Result):
    """The result of a job (anything queued on a device). In cluster mode it carries its replica."""

    replica: Replica | None = Field(default=None, description="cluster mode only: the replica {id, node, device} that ran the job")


class NoParams(Params):
    pass
