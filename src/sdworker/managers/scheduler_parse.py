"""Reading a request's ``data.scheduler`` and ``data.sampler`` into one SchedulerChoice (``resolve``).

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .scheduler_names import (
    _ALGOS,
    _SCHED_BY_ID,
    _SCHEDS,
    SIGMA_FLAGS,
    SchedulerChoice,
    _accepted_message,
    _Algo,
    _fail,
    _make,
    _norm,
    _Sched,
    _supports,
    _tables,
)

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
