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

Naming
======
Names are matched case-insensitively, ignoring spaces, ``_``, ``-`` and ``+``; a leading
``k_`` (A1111's old API aliases: ``k_euler_a``, ``k_dpmpp_2m``) is also ignored. A *full
sampler name* is one of:

* an A1111 name, optionally followed by a schedule: ``"Euler a"``, ``"DPM++ 2M Karras"``,
  ``"DPM++ 2M SDE Exponential"``, ``"UniPC SGM Uniform"``;
* a ComfyUI sampler name (or alias, or our canonical id), optionally followed by a schedule:
  ``"dpmpp_2m"``, ``"euler_ancestral"``, ``"euler_a"``, ``"dpmpp_2m_karras"``,
  ``"dpmpp_2m+karras"``;
* a diffusers class name, optionally with flags: ``"DPMSolverMultistepScheduler"``,
  ``"DPMSolverMultistepScheduler+use_karras_sigmas"``,
  ``"DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', use_karras_sigmas=True)"``,
  ``"EulerDiscreteScheduler+karras"``. Flags are separated by ``+``, ``,`` or ``;`` (optionally
  inside parentheses); a bare flag means ``=True``. Accepted flags: ``use_karras_sigmas``,
  ``use_exponential_sigmas``, ``use_beta_sigmas`` (true; false is a no-op),
  ``timestep_spacing`` (``"trailing"`` = sgm_uniform; ``"linspace"`` only together with the
  exponential or beta flag, which imply it), ``algorithm_type`` (for
  ``DPMSolverMultistepScheduler``: ``"dpmsolver++"`` = DPM++ 2M, ``"sde-dpmsolver++"`` =
  DPM++ 2M SDE; for other classes only their one value), and bare schedule names. Anything
  else is refused, so a class-name request always lands on a row of the table below.

Schedule names: ``normal`` (the model's default spacing; aliases ``default``, ``automatic``,
``auto``, ``uniform``, ``discrete``), ``karras`` (alias ``ka``, as in ``k_dpmpp_2m_ka``),
``exponential``, ``beta``, ``sgm_uniform``, ``simple``.

Semantics of the two fields
===========================
* Neither given (``None`` or blank) -> ``None``: keep the model's scheduler.
* ``scheduler`` alone: a full sampler name; an absent schedule means ``normal``. A schedule
  name alone is refused (there is no algorithm to apply it to), except ``normal`` and its
  aliases, which mean ``None``.
* ``sampler`` alone: exactly like ``scheduler`` alone (a full sampler name, schedule suffix
  allowed), errors reported at ``data.sampler``.
* Both: ``sampler`` is a full sampler name (normally just the algorithm); ``scheduler`` is a
  schedule name (ComfyUI style: ``sampler="dpmpp_2m", scheduler="karras"`` is
  ``"DPM++ 2M Karras"``) or a full sampler name naming the same algorithm. When both carry a
  schedule they must agree, except that ``normal`` (and aliases) on either side yields to an
  explicit schedule on the other. A different algorithm in ``scheduler`` is refused
  (``data.scheduler``), never silently preferred.
* A combination the class cannot do in diffusers 0.42 (``Euler a Karras``: no
  ``use_karras_sigmas`` on ``EulerAncestralDiscreteScheduler``; ``DDIM``/``PLMS``/``LCM`` with
  karras, exponential or beta; ``DPM++ SDE`` with sgm_uniform or simple: no
  ``timestep_spacing`` on ``DPMSolverSinglestepScheduler``) is refused with a message naming
  the schedules that algorithm supports.
* Names with no diffusers equivalent (``DPM++ 2S a``, ``DPM fast``, ``DPM adaptive``,
  ``DPM++ 3M SDE``, ``Restart``...) are refused with a message saying so.

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

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..errors import Unsupported, ValidationFailed

__all__ = [
    "SchedulerChoice",
    "accepted_names",
    "build",
    "catalog",
    "display_name",
    "missing_requirements",
    "resolve",
    "schedule_names",
]

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


# ---- parsing -------------------------------------------------------------------------------------

# One flag after a class name: [sep] key [= value]; values may be quoted or bare (sde-dpmsolver++).
_FLAG_RE = re.compile(r"""\s*[+,;]?\s*(?P<key>[A-Za-z_]\w*)\s*(?:[=:]\s*(?P<val>"[^"]*"|'[^']*'|[\w.\-]+\+*))?\s*""")
_CLASS_RE = re.compile(r"\s*(?P<cls>[A-Za-z0-9]+Scheduler)\b(?P<rest>.*)\Z", re.S | re.I)


def _value(raw: str | None) -> Any:
    if raw is None:
        return True
    if raw[:1] in "\"'":
        return raw[1:-1]
    low = raw.lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0", "none"):
        return False
    return raw


@dataclass(frozen=True)
class _Parsed:
    algo: _Algo
    sched: _Sched  # normal when the name carried no schedule


def _parse_class(m: re.Match[str], path: str) -> _Parsed:
    _, scheds, classes, _ = _tables()
    cls = classes.get(m.group("cls").lower())
    if cls is None:
        raise _fail(path, f"unknown diffusers scheduler class {m.group('cls')!r}; {_accepted_message()}")
    rest = m.group("rest").strip()
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1]
    flags: dict[str, Any] = {}
    pos = 0
    while pos < len(rest):
        fm = _FLAG_RE.match(rest, pos)
        if fm is None or fm.end() == pos:
            raise _fail(path, f"cannot read the flags {rest!r} after {cls}; write e.g. {cls}(use_karras_sigmas=True)")
        key, val = fm.group("key"), _value(fm.group("val"))
        if key in flags and flags[key] != val:
            raise _fail(path, f"flag {key} given twice")
        flags[key] = val
        pos = fm.end()

    candidates = [a for a in _ALGOS if a.class_name == cls]
    algo = candidates[0]
    if "algorithm_type" in flags:
        wanted = flags.pop("algorithm_type")
        found = [a for a in candidates if dict(a.flags).get("algorithm_type") == wanted]
        if not found:
            ok = [dict(a.flags)["algorithm_type"] for a in candidates if "algorithm_type" in dict(a.flags)]
            raise _fail(
                path,
                f"{cls} algorithm_type={wanted!r} is not in the sampler table; accepted: {', '.join(ok) or 'none'}",
            )
        algo = found[0]

    chosen: list[_Sched] = []
    spacing = flags.pop("timestep_spacing", None)
    for key, val in flags.items():
        sflag = next((s for s in _SCHEDS if s.sigma_flag == key), None)
        named = scheds.get(_norm(key)) if val is True else None
        if sflag is not None:
            if val is True:
                chosen.append(sflag)
            elif val is not False:
                raise _fail(path, f"{key} takes true or false, not {val!r}")
        elif named is not None:
            chosen.append(named)
        else:
            raise _fail(
                path,
                f"flag {key!r} is not accepted for {cls}; accepted flags: {', '.join(SIGMA_FLAGS)}, "
                "timestep_spacing, algorithm_type, or a schedule name (karras, exponential, beta, sgm_uniform, simple)",
            )
    chosen = [s for s in dict.fromkeys(chosen) if s.id != "normal"]
    if spacing is not None:
        if spacing == "trailing" and not any(s.sigma_flag for s in chosen):
            if not chosen:
                chosen.append(_SCHED_BY_ID["sgm_uniform"])
        elif not (spacing == "linspace" and any(s.spacing == "linspace" for s in chosen)):
            raise _fail(
                path,
                f"timestep_spacing={spacing!r} is not in the sampler table here: use 'trailing' (sgm_uniform) "
                "alone, or 'linspace' with use_exponential_sigmas / use_beta_sigmas",
            )
    if len(chosen) > 1:
        raise _fail(path, f"{cls}: only one schedule at a time ({', '.join(s.id for s in chosen)} given)")
    sched = chosen[0] if chosen else _SCHED_BY_ID["normal"]
    return _Parsed(algo, sched)


def _parse_full(name: str, path: str) -> _Parsed:
    """A full sampler name (any family, optional schedule) -> algorithm + schedule."""
    m = _CLASS_RE.match(name)
    if m:
        return _parse_class(m, path)
    algos, scheds, _, none = _tables()
    key = _norm(name)
    for k in (key, key[1:] if key.startswith("k") else None):
        if not k:
            continue
        if k in algos:
            return _Parsed(algos[k], _SCHED_BY_ID["normal"])
        # longest schedule suffix first: "sgmuniform" before "uniform"
        for skey in sorted(scheds, key=len, reverse=True):
            if k.endswith(skey) and k[: -len(skey)] in algos:
                return _Parsed(algos[k[: -len(skey)]], scheds[skey])
        bare = next((k[: -len(sk)] for sk in scheds if k.endswith(sk) and k[: -len(sk)] in none), k)
        if bare in none:
            raise _fail(path, f"{name!r}: {none[bare]} has no diffusers equivalent; {_accepted_message()}")
    if key in scheds:
        raise _fail(path, f"{name!r} is a sigma schedule, not a sampler; {_accepted_message()}")
    raise _fail(path, f"unknown sampler {name!r}; {_accepted_message()}")


def _check(parsed: _Parsed, path: str) -> SchedulerChoice:
    algo, sched = parsed.algo, parsed.sched
    if not _supports(algo, sched):
        ok = ", ".join(s.id for s in _SCHEDS if _supports(algo, s))
        why = (
            f"{algo.class_name} has no {sched.sigma_flag}"
            if sched.sigma_flag
            else f"{algo.class_name} has no timestep_spacing"
        )
        raise _fail(
            path,
            f"{algo.a1111} cannot use the {sched.id} schedule in diffusers ({why}); schedules for {algo.a1111}: {ok}",
        )
    return _make(algo, sched)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def resolve(scheduler: str | None, sampler: str | None = None) -> SchedulerChoice | None:
    """Request fields -> a choice, or None for "the model's own scheduler". See the module doc."""
    for v, path in ((scheduler, "scheduler"), (sampler, "sampler")):
        if not _blank(v) and not isinstance(v, str):
            raise _fail(path, f"must be a string, not {type(v).__name__}")
    _, scheds, _, _ = _tables()
    normal = _SCHED_BY_ID["normal"]

    if _blank(sampler) or _blank(scheduler):
        # One field alone: a full sampler name, whichever field it is in.
        if _blank(sampler) and _blank(scheduler):
            return None
        name, path = (scheduler, "scheduler") if _blank(sampler) else (sampler, "sampler")
        assert isinstance(name, str)
        alone = scheds.get(_norm(name))
        if alone is normal:
            return None
        if alone is not None:
            raise _fail(
                path,
                f"{name!r} is a sigma schedule; name the sampler too (data.sampler, with the schedule in "
                f'data.scheduler), e.g. sampler "dpmpp_2m" with scheduler "{alone.id}"',
            )
        return _check(_parse_full(name, path), path)

    assert isinstance(sampler, str) and isinstance(scheduler, str)
    base = _parse_full(sampler, "sampler")
    sched_only = scheds.get(_norm(scheduler))
    if sched_only is not None:
        other = _Parsed(base.algo, sched_only)
    else:
        other = _parse_full(scheduler, "scheduler")
        if other.algo is not base.algo:
            raise _fail(
                "scheduler",
                f"{scheduler!r} names the sampler {other.algo.a1111}, but data.sampler names {base.algo.a1111}; "
                "with data.sampler given, data.scheduler takes a schedule: " + ", ".join(s.id for s in _SCHEDS),
            )
    if base.sched is other.sched or other.sched is normal:
        sched, path = base.sched, "sampler"
    elif base.sched is normal:
        sched, path = other.sched, "scheduler"
    else:
        raise _fail(
            "scheduler",
            f"schedule {other.sched.id!r} conflicts with {base.sched.id!r} in data.sampler ({sampler!r})",
        )
    return _check(_Parsed(base.algo, sched), path)


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
