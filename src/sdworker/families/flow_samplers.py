"""Sampler names for the flow-matching families (Flux, HiDream, Wan).

These families take no SD sampler table: a request names one of a few flow-matching schedulers,
in any of the spellings hosts use ("euler", "Euler simple", "flow_match_euler", "UniPC",
"uni_pc normal", the diffusers class name), optionally with a schedule that changes nothing
here (simple / normal: the model's own sigmas). Names compare like managers.schedulers does:
lower case, without spaces, "_", "-", "+".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import problem

if TYPE_CHECKING:
    from ..schemas.generation import GenerationRequest

EULER = "FlowMatchEulerDiscreteScheduler"
UNIPC = "UniPCMultistepScheduler"
_NAMES: dict[str, tuple[str, ...]] = {
    EULER: ("euler", "flowmatcheuler", "flowmatcheulerdiscrete", "flowmatcheulerdiscretescheduler"),
    UNIPC: ("unipc", "unipcbh2", "unipcmultistep", "unipcmultistepscheduler", "flowunipc", "flowunipcmultistepscheduler"),
}
#: Schedules that leave the model's own sigmas as they are.
SCHEDULES: tuple[str, ...] = ("default", "normal", "automatic", "auto", "simple")


def name_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _-+")


def algorithm(name: str | None, accepted: tuple[str, ...]) -> str | None:
    """The scheduler class among `accepted` that `name` asks for; "" for no name or a schedule only;
    None when the name is not one of them."""
    if name is None or not name.strip():
        return ""
    key = name_key(name)
    if key in SCHEDULES:
        return ""
    stems = [key] + [key[: -len(s)] for s in SCHEDULES if key.endswith(s)]  # "euler", "euler_simple", "uni_pc normal"
    for cls in accepted:
        if any(stem in _NAMES[cls] for stem in stems):
            return cls
    return None


def requested(req: GenerationRequest, accepted: tuple[str, ...]) -> str:
    """The scheduler class the request names in sampler or scheduler ("" when neither names one)."""
    for value in (req.sampler, req.scheduler):
        found = algorithm(value, accepted)
        if found:
            return found
    return ""


def problems(req: GenerationRequest, accepted: tuple[str, ...], family: str, accepted_text: str) -> list[dict[str, str]]:
    """A problem at data.sampler / data.scheduler for each name that is not one of `accepted`."""
    out = []
    for fld in ("sampler", "scheduler"):
        value = getattr(req, fld)
        if algorithm(value, accepted) is None:
            out.append(problem(f"data.{fld}", f"{value!r}: {family} runs flow-matching schedulers only; accepted: {accepted_text}"))
    return out
