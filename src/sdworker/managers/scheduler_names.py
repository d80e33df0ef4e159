"""The sampler table: algorithms, sigma schedules and the diffusers classes behind them, and the
names they are known by (A1111, ComfyUI, canonical ids, class names). Data and lookups only;
parsing a request is scheduler_parse's job, building a scheduler schedulers'.

The table (diffusers docs, ``api/schedulers/overview.md``)
==========================================================
====================  ========================  ======================================  ==============================
A1111                 ComfyUI / id              diffusers class                         flags
====================  ========================  ======================================  ==============================
Euler                 euler                     EulerDiscreteScheduler
Euler a               euler_ancestral           EulerAncestralDiscreteScheduler
Heun                  heun                      HeunDiscreteScheduler
DPM2                  dpm_2                     KDPM2DiscreteScheduler
DPM2 a                dpm_2_ancestral           KDPM2AncestralDiscreteScheduler
LMS                   lms                       LMSDiscreteScheduler                    (needs scipy)
DPM++ 2M              dpmpp_2m                  DPMSolverMultistepScheduler             algorithm_type="dpmsolver++"
DPM++ 2M SDE          dpmpp_2m_sde              DPMSolverMultistepScheduler             algorithm_type="sde-dpmsolver++"
DPM++ SDE             dpmpp_sde                 DPMSolverSinglestepScheduler            algorithm_type="dpmsolver++"
(DPM++ SDE)           dpmpp_sde_brownian        DPMSolverSDEScheduler                   (needs torchsde; by class name)
DDIM                  ddim                      DDIMScheduler
PLMS                  plms                      PNDMScheduler                           skip_prk_steps=True
UniPC                 uni_pc                    UniPCMultistepScheduler
DEIS                  deis                      DEISMultistepScheduler                  algorithm_type="deis"
LCM                   lcm                       LCMScheduler
====================  ========================  ======================================  ==============================

Schedules: ``karras`` -> ``use_karras_sigmas=True``; ``exponential`` ->
``use_exponential_sigmas=True, timestep_spacing="linspace"``; ``beta`` -> ``use_beta_sigmas=True,
timestep_spacing="linspace"`` (needs scipy); ``sgm_uniform`` and ``simple`` ->
``timestep_spacing="trailing"``; ``normal`` -> the base config's spacing. ``timestep_spacing`` is
only set on classes that have it (``DPMSolverSinglestepScheduler`` does not). For every class
that has the three ``use_*_sigmas`` flags, the ones not chosen are set to ``False`` in
``choice.flags``, so a model whose own config says ``use_karras_sigmas=True`` still gets plain
"DPM++ 2M" when asked for it.

Note the docs map A1111's "DPM++ SDE" to ``DPMSolverSinglestepScheduler`` (a deterministic
single-step DPM-Solver++), not to the k-diffusion port ``DPMSolverSDEScheduler``; the contract
says the docs' table rules, so that is what ``"DPM++ SDE"``/``"dpmpp_sde"`` give. The port is
reachable by its class name or the id ``dpmpp_sde_brownian``.

Known diffusers behaviour (not changed here): on a config with ``timestep_spacing="leading"``
(SDXL's and SD 1.5's), the Euler/Heun/DPM2/LMS family computes Karras sigmas between the
sigmas of the leading-spaced timesteps, so with 10 steps "Euler Karras" starts at t=901
(sigma 8.4) where "DPM++ 2M Karras" and "UniPC Karras" start at t=999 (sigma 14.6); plain
"Euler" on such a config starts at t=901 too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..errors import ValidationFailed

SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class SchedulerChoice:
    """One row of the table: an algorithm with a sigma schedule, ready for :func:`build`.

    ``flags`` is a plain dict for convenience (JSON-friendly); treat it as read-only, :func:`build`
    copies it. It is excluded from hashing (the other fields determine it).
    """

    class_name: str  # diffusers class, e.g. "DPMSolverMultistepScheduler"
    flags: dict[str, Any] = field(hash=False)  # kwargs for Class.from_config(base, **flags)
    display_name: str = ""  # A1111 style, for infotext: "DPM++ 2M Karras"
    id: str = ""  # canonical id, accepted by resolve(): "dpmpp_2m+karras"
    algorithm: str = ""  # "dpmpp_2m"
    schedule: str = "normal"  # "karras"
    requires: tuple[str, ...] = ()  # Python packages build() needs beyond diffusers

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.display_name,
            "class_name": self.class_name,
            "flags": dict(self.flags),
            "algorithm": self.algorithm,
            "schedule": self.schedule,
            "requires": list(self.requires),
        }


# ---- the static tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Class:
    sigma_flags: bool  # has use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas
    spacing: bool  # has timestep_spacing
    requires: tuple[str, ...] = ()


# Verified against diffusers 0.42.1's __init__ signatures (tests/test_schedulers.py re-checks).
_CLASSES: dict[str, _Class] = {
    "EulerDiscreteScheduler": _Class(True, True),
    "EulerAncestralDiscreteScheduler": _Class(False, True),
    "HeunDiscreteScheduler": _Class(True, True),
    "KDPM2DiscreteScheduler": _Class(True, True),
    "KDPM2AncestralDiscreteScheduler": _Class(True, True),
    "LMSDiscreteScheduler": _Class(True, True, ("scipy",)),
    "DPMSolverMultistepScheduler": _Class(True, True),
    "DPMSolverSinglestepScheduler": _Class(True, False),
    "DPMSolverSDEScheduler": _Class(True, True, ("torchsde",)),
    "DDIMScheduler": _Class(False, True),
    "PNDMScheduler": _Class(False, True),
    "UniPCMultistepScheduler": _Class(True, True),
    "DEISMultistepScheduler": _Class(True, True),
    "LCMScheduler": _Class(False, True),
}


@dataclass(frozen=True)
class _Algo:
    id: str  # ComfyUI's sampler name where it has one
    a1111: str  # A1111 display name
    class_name: str
    flags: tuple[tuple[str, Any], ...] = ()
    aliases: tuple[str, ...] = ()  # extra spellings (normalized on lookup)
    by_a1111_name: bool = True  # False: the A1111 name maps elsewhere; reachable by id/class only


_ALGOS: tuple[_Algo, ...] = (
    _Algo("euler", "Euler", "EulerDiscreteScheduler"),
    _Algo("euler_ancestral", "Euler a", "EulerAncestralDiscreteScheduler", aliases=("euler_a", "euler ancestral")),
    _Algo("heun", "Heun", "HeunDiscreteScheduler"),
    _Algo("dpm_2", "DPM2", "KDPM2DiscreteScheduler"),
    _Algo("dpm_2_ancestral", "DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("dpm_2_a", "dpm2 ancestral")),
    _Algo("lms", "LMS", "LMSDiscreteScheduler"),
    _Algo("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", (("algorithm_type", "dpmsolver++"),)),
    _Algo(
        "dpmpp_2m_sde",
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "sde-dpmsolver++"),),
        aliases=("dpmpp_2m_sde_gpu",),
    ),
    _Algo(
        "dpmpp_sde",
        "DPM++ SDE",
        "DPMSolverSinglestepScheduler",
        (("algorithm_type", "dpmsolver++"),),
        aliases=("dpmpp_sde_gpu",),
    ),
    _Algo("dpmpp_sde_brownian", "DPM++ SDE", "DPMSolverSDEScheduler", by_a1111_name=False),
    _Algo("ddim", "DDIM", "DDIMScheduler"),
    _Algo("plms", "PLMS", "PNDMScheduler", (("skip_prk_steps", True),), aliases=("pndm",)),
    _Algo("uni_pc", "UniPC", "UniPCMultistepScheduler", aliases=("uni_pc_bh2",)),
    _Algo("deis", "DEIS", "DEISMultistepScheduler", (("algorithm_type", "deis"),)),
    _Algo("lcm", "LCM", "LCMScheduler"),
)
_ALGO_BY_ID = {a.id: a for a in _ALGOS}


@dataclass(frozen=True)
class _Sched:
    id: str
    a1111: str  # suffix in A1111 names ("" for normal)
    sigma_flag: str | None  # the use_*_sigmas flag it sets
    spacing: str | None  # the timestep_spacing it sets
    requires: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


_SCHEDS: tuple[_Sched, ...] = (
    _Sched("normal", "", None, None, aliases=("default", "automatic", "auto", "uniform", "discrete")),
    _Sched("karras", "Karras", "use_karras_sigmas", None, aliases=("ka",)),
    _Sched("exponential", "Exponential", "use_exponential_sigmas", "linspace"),
    _Sched("beta", "Beta", "use_beta_sigmas", "linspace", ("scipy",)),
    _Sched("sgm_uniform", "SGM Uniform", None, "trailing"),
    _Sched("simple", "Simple", None, "trailing"),
)
_SCHED_BY_ID = {s.id: s for s in _SCHEDS}

# Well-known names with no diffusers equivalent (docs table: N/A), refused with a clear message.
_NO_EQUIVALENT = {
    "DPM++ 2S a": ("dpmpp_2s_ancestral", "dpmpp_2s_a"),
    "DPM++ 3M SDE": ("dpmpp_3m_sde", "dpmpp_3m_sde_gpu"),
    "DPM fast": ("dpm_fast", "k_dpm_fast"),
    "DPM adaptive": ("dpm_adaptive", "k_dpm_ad"),
    "Restart": ("restart",),
    "DPM++ 2M SDE Heun": ("dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu"),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-+]+", "", name).lower()


def _supports(algo: _Algo, sched: _Sched) -> bool:
    cls = _CLASSES[algo.class_name]
    if sched.sigma_flag and not cls.sigma_flags:
        return False
    if sched.sigma_flag is None and sched.spacing and not cls.spacing:
        return False  # sgm_uniform/simple are nothing but the spacing
    return True


def _make(algo: _Algo, sched: _Sched) -> SchedulerChoice:
    cls = _CLASSES[algo.class_name]
    flags: dict[str, Any] = dict(algo.flags)
    if cls.sigma_flags:
        for f in SIGMA_FLAGS:
            flags[f] = f == sched.sigma_flag
    if sched.spacing and cls.spacing:
        flags["timestep_spacing"] = sched.spacing
    display = algo.a1111 if sched.id == "normal" else f"{algo.a1111} {sched.a1111}"
    ident = algo.id if sched.id == "normal" else f"{algo.id}+{sched.id}"
    requires = tuple(dict.fromkeys(cls.requires + sched.requires))
    return SchedulerChoice(algo.class_name, flags, display, ident, algo.id, sched.id, requires)


@cache
def _tables() -> tuple[dict[str, _Algo], dict[str, _Sched], dict[str, str], dict[str, str]]:
    """(normalized algorithm name -> algo, normalized schedule name -> sched,
    normalized class name -> class name, normalized no-equivalent name -> its A1111 name)."""
    algos: dict[str, _Algo] = {}
    for a in _ALGOS:
        keys = [a.id, *a.aliases] + ([a.a1111] if a.by_a1111_name else [])
        for k in keys:
            algos.setdefault(_norm(k), a)
    scheds: dict[str, _Sched] = {}
    for s in _SCHEDS:
        for k in (s.id, s.a1111, *s.aliases):
            if k:
                scheds[_norm(k)] = s
    classes = {c.lower(): c for c in _CLASSES}
    none = {}
    for title, aliases in _NO_EQUIVALENT.items():
        for k in (title, *aliases):
            none[_norm(k)] = title
    return algos, scheds, classes, none


def catalog() -> list[SchedulerChoice]:
    """Every valid algorithm x schedule choice, algorithm-major in table order."""
    return [_make(a, s) for a in _ALGOS for s in _SCHEDS if _supports(a, s)]


@cache
def accepted_names() -> list[str]:
    """Every accepted full sampler name, in canonical spelling (aliases included, schedules not)."""
    out: list[str] = []
    for c in catalog():
        algo = _ALGO_BY_ID[c.algorithm]
        if algo.by_a1111_name:
            out.append(c.display_name)
    for a in _ALGOS:
        out.append(a.id)
        out.extend(a.aliases)
    out.extend(c.id for c in catalog() if c.schedule != "normal")
    out.extend(_CLASSES)
    return list(dict.fromkeys(out))


def schedule_names() -> list[str]:
    """The sigma schedule names data.scheduler takes beside data.sampler."""
    return [s.id for s in _SCHEDS]


def _accepted_message() -> str:
    a1111 = ", ".join(dict.fromkeys(a.a1111 for a in _ALGOS if a.by_a1111_name))
    comfy = ", ".join(a.id for a in _ALGOS)
    scheds = ", ".join(s.id for s in _SCHEDS)
    classes = ", ".join(_CLASSES)
    return (
        f"accepted samplers: {a1111} (A1111 names, optionally followed by a schedule, "
        f'e.g. "DPM++ 2M Karras"); {comfy} (ComfyUI names); {classes} (diffusers classes, '
        f'optionally with flags, e.g. "DPMSolverMultistepScheduler+use_karras_sigmas"); '
        f"schedules (data.scheduler beside data.sampler): {scheds}"
    )


def _fail(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{path}: {message}", [{"path": path, "message": message}])
