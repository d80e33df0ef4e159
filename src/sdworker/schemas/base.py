"""Shared model bases."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Request params: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class Result(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)


class NoParams(Params):
    pass
