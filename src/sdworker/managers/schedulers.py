"""Scheduler (sampler) naming and construction: one name in, one diffusers scheduler out.

This module turns what a request says about sampling (``data.scheduler`` and ``data.sampler``)
into a :class:`SchedulerChoice`, and a choice plus the model's own scheduler config into a
diffusers scheduler instance. It imports neither torch nor diffusers at import time; only
:func:`build` imports diffusers.

API
===
``resolve(scheduler, sampler) -> SchedulerChoice | None``
    Parse the two request fields (rules below). ``None`` means "keep the model's own scheduler"
    (both fields empty, or only ``"default"``/``"normal"``/``"automatic"``). Raises
    :class:`~sdworker.errors.ValidationFailed` (code ``validation_error``) with
    ``details=[{"path": "scheduler" | "sampler", "message": ...}]`` for anything it
    cannot accept; the message lists the accepted names. It never raises anything else.
``build(choice, base_config) -> scheduler``
    ``getattr(diffusers, choice.class_name).from_config(base_config, **choice.flags)``, with the
    base config's keys the class does not take left out (from_config would drop them anyway,
    after logging a warning on every request). The base
    config must be the MODEL's scheduler config (``pipe.scheduler.config`` as loaded, or
    ``scheduler/scheduler_config.json``), never the config of a scheduler built for an earlier
    request: ``choice.flags`` always states every schedule flag the class has, so nothing from
    the base config's schedule or an earlier request leaks in. ``base_config`` is not modified.
    Raises :class:`~sdworker.errors.Unsupported` (code ``unsupported``) when the
    choice needs a package this environment lacks (LMS and the beta schedule need ``scipy``;
    ``DPMSolverSDEScheduler`` needs ``torchsde``), when the base config is a flow-matching one
    (Flux, SD3, Wan: these samplers are for epsilon/v-prediction models), or when diffusers
    refuses the combination.
``accepted_names() -> list[str]``
    Every full sampler name :func:`resolve` accepts, in canonical spelling: A1111 display names
    of every valid algorithm x schedule pair, ComfyUI names and aliases, canonical ids,
    diffusers class names. ``schedule_names()`` lists the schedule names. For capabilities.
``catalog() -> list[SchedulerChoice]``
    Every valid algorithm x schedule choice, in table order; ``missing_requirements(choice)``
    tells which of them this environment cannot build (``[]`` when it can).
``display_name(scheduler) -> str``
    The A1111-style name of a built scheduler instance (for infotext), read from its class and
    config: ``"DPM++ 2M Karras"``, ``"Euler a"``, ``"Euler SGM Uniform"``. Classes outside the
    table give their class name. When a request named a sampler, prefer ``choice.display_name``
    (it keeps "Simple" vs "SGM Uniform", which build identical schedulers).

Modules: scheduler_names (the table and its names), scheduler_parse (the two request fields and
their rules), this one (the API, requirements, building and naming a built scheduler).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from functools import cache
from typing import Any

from ..errors import Unsupported
from .scheduler_names import _ALGO_BY_ID as _ALGO_BY_ID  # the tables, as tests read them here
from .scheduler_names import _ALGOS, _SCHEDS, SIGMA_FLAGS, SchedulerChoice, accepted_names, catalog, schedule_names
from .scheduler_names import _CLASSES as _CLASSES
from .scheduler_names import _norm as _norm
from .scheduler_names import _tables as _tables
from .scheduler_parse import resolve

__all__ = [
    "SIGMA_FLAGS",
    "SchedulerChoice",
    "accepted_names",
    "build",
    "catalog",
    "display_name",
    "missing_requirements",
    "resolve",
    "schedule_names",
]


# ---- requirements and building -------------------------------------------------------------------


@cache
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(choice: SchedulerChoice) -> list[str]:
    """Packages ``choice`` needs that this environment cannot import ([] when it can be built)."""
    return [m for m in choice.requires if not _importable(m)]


def _is_flow_config(cfg: Mapping[str, Any]) -> bool:
    name = str(cfg.get("_class_name") or "")
    return (
        name.startswith("FlowMatch")
        or bool(cfg.get("use_flow_sigmas"))
        or cfg.get("prediction_type") == "flow_prediction"
    )


def build(choice: SchedulerChoice, base_config: Mapping[str, Any]) -> Any:
    """A fresh scheduler: ``Class.from_config(base_config, **choice.flags)``; see the module doc."""
    if _is_flow_config(base_config):
        raise Unsupported(
            f"{choice.display_name} cannot drive this model: its scheduler is a flow-matching one "
            f"({base_config.get('_class_name')}); leave data.scheduler and data.sampler unset",
            [{"path": "scheduler", "message": "flow-matching model"}],
        )
    missing = missing_requirements(choice)
    if missing:
        pkgs = " ".join(missing)
        raise Unsupported(
            f"{choice.display_name} ({choice.class_name}) needs the Python package(s) {pkgs}, which this "
            f"worker's environment does not have (pip install {pkgs}); pick another sampler",
            [{"path": "scheduler", "message": f"needs {pkgs}"}],
        )
    import inspect

    import diffusers

    cls = getattr(diffusers, choice.class_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    # Only the keys this class takes (plus bookkeeping like _class_name): the rest would be
    # ignored by from_config anyway, after a warning per request.
    config = {k: v for k, v in dict(base_config).items() if k in accepted or k.startswith("_")}
    try:
        return cls.from_config(config, **dict(choice.flags))
    except (ValueError, NotImplementedError, ImportError, TypeError) as e:
        raise Unsupported(
            f"{choice.display_name} ({choice.class_name}) cannot be built from this model's scheduler config: {e}",
            [{"path": "scheduler", "message": str(e)}],
        ) from e


# ---- naming a built scheduler --------------------------------------------------------------------

_DISPLAY_ONLY = {"FlowMatchEulerDiscreteScheduler": "Euler", "DDPMScheduler": "DDPM", "TCDScheduler": "TCD"}


def display_name(scheduler: Any) -> str:
    """A1111-style name of a scheduler instance, for infotext (class name when not in the table)."""
    cls_name = type(scheduler).__name__
    cfg = getattr(scheduler, "config", None)
    cfg = cfg if isinstance(cfg, Mapping) else {}
    candidates = [a for a in _ALGOS if a.class_name == cls_name]
    if candidates:
        algo = candidates[0]
        if "algorithm_type" in dict(algo.flags):
            at = cfg.get("algorithm_type")
            match = [a for a in candidates if dict(a.flags).get("algorithm_type") == at]
            if not match:
                return f"{cls_name}(algorithm_type={at})"
            algo = match[0]
        name = algo.a1111
    elif cls_name in _DISPLAY_ONLY:
        name = _DISPLAY_ONLY[cls_name]
    else:
        return cls_name
    for s in _SCHEDS:
        if s.sigma_flag and cfg.get(s.sigma_flag):
            return f"{name} {s.a1111}"
    if cfg.get("timestep_spacing") == "trailing":
        return f"{name} SGM Uniform"
    return name
