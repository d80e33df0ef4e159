"""Methods are registered once, next to their handler, with the pydantic models of their shapes.

Where a method runs is declared there too: `inline=True` marks the cheap ones (in-memory reads,
no disk, no device, no torch wait) that the stdin reader answers itself; every other method runs
on the dispatcher's worker lane, so the reader never waits and ping, status and cancel lines are
read while a checkpoint loads or a job is planned.

`@method(...)` only tags a function; `Registry.add(instructor)` collects the tagged methods of
an instructor instance, so nothing global is built at import time. Shapes may be named as
"module:Class" (a module of sdworker.schemas): they are imported on first use, so the ready
event (which lists the method names) never waits for pydantic and the schema modules.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Union

from ..errors import UnknownMethod, from_validation

if TYPE_CHECKING:
    from pydantic import BaseModel

ShapeRef = Union[str, "type[BaseModel]"]  # a class, or "module:Class" under sdworker.schemas


def _resolve(ref: ShapeRef | None) -> Any:
    if ref is None or not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(f"sdworker.schemas.{module}"), name)

_TAG = "__sdworker_method__"


@dataclass
class MethodSpec:
    name: str
    handler: Callable[..., Any]
    params_ref: ShapeRef
    result_ref: ShapeRef | None
    job: bool  # generation work: planned on the worker lane, queued and run on a device executor
    summary: str
    inline: bool = False  # cheap: answered on the stdin reader; else on the worker lane

    @cached_property
    def params(self) -> "type[BaseModel]":
        return _resolve(self.params_ref)

    @cached_property
    def result(self) -> "type[BaseModel] | None":
        return _resolve(self.result_ref)

    def validate(self, params: dict[str, Any], prefix: str = "") -> "BaseModel":
        if not params and self._empty is not None:
            return self._empty  # control-plane calls without params skip validation (hot path)
        from pydantic import ValidationError

        try:
            return self.params.model_validate(params)
        except ValidationError as exc:
            raise from_validation(exc, prefix) from None

    @cached_property
    def _empty(self) -> "BaseModel | None":
        """The params of a call that sends none, when that is valid for this method (job params never)."""
        if self.job:
            return None
        from pydantic import ValidationError

        try:
            return self.params.model_validate({})
        except ValidationError:
            return None

    def describe(self) -> dict[str, Any]:
        """The method's shapes as JSON Schema: params in every spelling a host may send, and the result."""
        from ..schemas.wire_form import DIALECT, accepted_spellings

        return {
            "name": self.name,
            "job": self.job,
            "summary": self.summary,
            "params_schema": {"$schema": DIALECT, **accepted_spellings(self.params.model_json_schema())},
            "result_schema": {"$schema": DIALECT, **self.result.model_json_schema()} if self.result else None,
        }


def method(
    name: str,
    params: ShapeRef,
    result: ShapeRef | None = None,
    job: bool = False,
    inline: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Tag an instructor method as the handler of `name`; `inline` only for what takes microseconds."""
    if job and inline:
        raise ValueError(f"{name}: a job is planned on the worker lane, never inline")

    def tag(fn: Callable[..., Any]) -> Callable[..., Any]:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        setattr(fn, _TAG, (name, params, result, job, summary, inline))
        return fn

    return tag


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, MethodSpec] = {}

    def add(self, instructor: object) -> None:
        for attr in dir(type(instructor)):
            fn = getattr(type(instructor), attr, None)
            tag = getattr(fn, _TAG, None)
            if tag is None:
                continue
            name, params, result, job, summary, inline = tag
            if name in self._specs:
                raise ValueError(f"method {name!r} registered twice")
            self._specs[name] = MethodSpec(name, getattr(instructor, attr), params, result, job, summary, inline)

    def get(self, name: str) -> MethodSpec:
        spec = self._specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(self._specs), n=3, cutoff=0.5)
            if not close and "." not in name:
                bare = {n.split(".", 1)[1]: n for n in self._specs}
                close = [bare[m] for m in difflib.get_close_matches(name, list(bare), n=3, cutoff=0.5)]
            hint = f"; did you mean {', '.join(close)}?" if close else "; system.list_methods lists them"
            raise UnknownMethod(
                f"unknown method {name!r}{hint}",
                [{"path": "method", "message": f"close match: {c}"} for c in close],
            )
        return spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[MethodSpec]:
        return [self._specs[n] for n in self.names()]
