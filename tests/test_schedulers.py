"""Scheduler naming and construction (sdworker.managers.schedulers)."""

from __future__ import annotations

import ast
import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdworker.managers import schedulers as S
from sdworker.managers.schedulers import SchedulerChoice, build, display_name, resolve
from sdworker.errors import Unsupported, ValidationFailed, placed

# The scheduler config SDXL base ships (scheduler/scheduler_config.json).
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# SD 1.5's (PNDM), and a DPM++ config that already says Karras + SDE (some fine-tunes ship one).
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
DPM_KARRAS_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "algorithm_type": "sde-dpmsolver++",
    "use_karras_sigmas": True,
    "solver_order": 2,
}

CATALOG = S.catalog()

# diffusers 0.42 + numpy 2 + torch 2.13 warn on every set_timesteps; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def buildable(choice: SchedulerChoice) -> bool:
    return not S.missing_requirements(choice)


# ---- the module stays light ----------------------------------------------------------------------


def test_import_without_torch() -> None:
    code = (
        "import sys; import sdworker.managers.schedulers as s; s.resolve('DPM++ 2M Karras'); "
        "s.accepted_names(); assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('torch', 'diffusers')))[:5]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", S.accepted_names())
def test_every_accepted_name_resolves(name: str) -> None:
    choice = resolve(name, None)
    assert isinstance(choice, SchedulerChoice)
    assert resolve(None, name) == choice  # sampler alone == scheduler alone
    assert resolve(name.upper(), None) == choice
    assert resolve(f"  {name.lower()}  ", None) == choice
    # the canonical id and (for table names) the display name come back to the same choice
    assert resolve(choice.id, None) == choice
    if S._ALGO_BY_ID[choice.algorithm].by_a1111_name:
        assert resolve(choice.display_name, None) == choice


@pytest.mark.parametrize("choice", CATALOG, ids=lambda c: c.id)
def test_catalog_round_trips(choice: SchedulerChoice) -> None:
    assert resolve(choice.id, None) == choice
    assert resolve(choice.schedule, choice.algorithm) == choice  # ComfyUI style: (scheduler, sampler)
    assert resolve(None, choice.algorithm) == resolve("normal", choice.algorithm)
    assert hash(choice) == hash(resolve(choice.id, None))
    assert choice.to_dict()["flags"] == choice.flags


A1111_NAMES = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE Exponential": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True, "timestep_spacing": "linspace"},
    ),
    "DPM++ 2M Exponential": ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True}),
    "Euler Exponential": ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    "Euler Beta": ("EulerDiscreteScheduler", {"use_beta_sigmas": True, "timestep_spacing": "linspace"}),
    "Euler SGM Uniform": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "Euler a SGM Uniform": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "DDIM Simple": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
}


@pytest.mark.parametrize("name", sorted(A1111_NAMES))
def test_a1111_names_follow_the_diffusers_table(name: str) -> None:
    cls, flags = A1111_NAMES[name]
    choice = resolve(name, None)
    assert choice is not None
    assert choice.class_name == cls
    for k, v in flags.items():
        assert choice.flags[k] == v, (name, k)
    # the sigma flags not chosen are pinned off, so a model config's own cannot leak in
    for f in S.SIGMA_FLAGS:
        if f in choice.flags:
            assert choice.flags[f] == flags.get(f, False)
    assert choice.display_name == name


COMFY = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "deis": "DEIS",
    "lcm": "LCM",
    "k_euler_a": "Euler a",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_lms": "LMS",
    "pndm": "PLMS",
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_comfyui_names(name: str) -> None:
    assert resolve(name, None) == resolve(COMFY[name], None)


@pytest.mark.parametrize(
    "a1111,comfy_sampler,comfy_scheduler,cls_form",
    [
        ("DPM++ 2M Karras", "dpmpp_2m", "karras", "DPMSolverMultistepScheduler+use_karras_sigmas"),
        ("DPM++ 2M", "dpmpp_2m", "normal", "DPMSolverMultistepScheduler"),
        (
            "DPM++ 2M SDE Karras",
            "dpmpp_2m_sde",
            "karras",
            "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', use_karras_sigmas=True)",
        ),
        ("DPM++ 2M SDE", "dpmpp_2m_sde", "normal", 'DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")'),
        ("DPM++ SDE Karras", "dpmpp_sde", "karras", "DPMSolverSinglestepScheduler+use_karras_sigmas=true"),
        ("Euler a", "euler_ancestral", "normal", "EulerAncestralDiscreteScheduler"),
        ("Euler Karras", "euler", "karras", "EulerDiscreteScheduler, use_karras_sigmas=True"),
        (
            "Euler Exponential",
            "euler",
            "exponential",
            "EulerDiscreteScheduler+use_exponential_sigmas+timestep_spacing=linspace",
        ),
        ("Euler Beta", "euler", "beta", "EulerDiscreteScheduler(use_beta_sigmas=True)"),
        ("Euler SGM Uniform", "euler", "sgm_uniform", "EulerDiscreteScheduler(timestep_spacing='trailing')"),
        ("DPM2 a Karras", "dpm_2_ancestral", "karras", "KDPM2AncestralDiscreteScheduler+karras"),
        ("UniPC Karras", "uni_pc", "karras", "unipcmultistepscheduler;use_karras_sigmas"),
        ("DEIS", "deis", "normal", "DEISMultistepScheduler(algorithm_type=deis)"),
        ("LMS Karras", "lms", "karras", "LMSDiscreteScheduler+use_karras_sigmas"),
        ("DPM++ 2M", "dpmpp_2m", "default", "DPMSolverMultistepScheduler(use_karras_sigmas=False)"),
    ],
)
def test_three_families_agree(a1111: str, comfy_sampler: str, comfy_scheduler: str, cls_form: str) -> None:
    want = resolve(a1111, None)
    assert want is not None
    assert resolve(None, a1111) == want
    assert resolve(comfy_scheduler, comfy_sampler) == want
    assert resolve(cls_form, None) == want
    assert resolve(comfy_sampler.replace("_", " ") + " " + comfy_scheduler, None) == want or comfy_scheduler in (
        "normal",
        "default",
    )


def test_sampler_and_scheduler_combinations() -> None:
    k = resolve("DPM++ 2M Karras")
    assert resolve("karras", "DPM++ 2M") == k
    assert resolve("Karras", "DPM++ 2M Karras") == k  # same schedule twice: fine
    assert resolve("normal", "DPM++ 2M Karras") == k  # normal yields to an explicit schedule
    assert resolve("DPM++ 2M Karras", "dpmpp_2m") == k  # full name in scheduler, same algorithm
    assert resolve("dpmpp_2m", "DPM++ 2M Karras") == k
    assert resolve("DPMSolverMultistepScheduler", "dpmpp_2m") == resolve("DPM++ 2M")
    assert resolve("sgm_uniform", "DPMSolverMultistepScheduler") == resolve("DPM++ 2M SGM Uniform")
    with pytest.raises(ValidationFailed):
        resolve("karras", "")  # a schedule alone names no algorithm


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_nothing_means_model_default(blank) -> None:
    assert resolve(blank, blank) is None
    for word in ("default", "normal", "Automatic", "auto"):
        assert resolve(word, blank) is None
        assert resolve(blank, word) is None


@pytest.mark.parametrize(
    "scheduler,sampler,path,needle",
    [
        ("foo", None, "data.scheduler", "unknown sampler"),
        (None, "foo", "data.sampler", "unknown sampler"),
        ("karras", None, "data.scheduler", "sigma schedule"),
        (None, "exponential", "data.sampler", "sigma schedule"),
        ("Euler a Karras", None, "data.scheduler", "EulerAncestralDiscreteScheduler has no use_karras_sigmas"),
        ("karras", "euler_ancestral", "data.scheduler", "schedules for Euler a: normal, sgm_uniform, simple"),
        (None, "Euler a Karras", "data.sampler", "has no use_karras_sigmas"),
        ("DDIM Karras", None, "data.scheduler", "DDIMScheduler has no use_karras_sigmas"),
        ("LCM Exponential", None, "data.scheduler", "LCMScheduler has no use_exponential_sigmas"),
        ("PLMS Beta", None, "data.scheduler", "PNDMScheduler has no use_beta_sigmas"),
        ("DPM++ SDE SGM Uniform", None, "data.scheduler", "DPMSolverSinglestepScheduler has no timestep_spacing"),
        ("simple", "dpmpp_sde", "data.scheduler", "has no timestep_spacing"),
        ("exponential", "DPM++ 2M Karras", "data.scheduler", "conflicts"),
        ("euler", "dpmpp_2m", "data.scheduler", "data.sampler names DPM++ 2M"),
        ("DPM++ 2S a", None, "data.scheduler", "no diffusers equivalent"),
        ("dpmpp_2s_ancestral", None, "data.scheduler", "no diffusers equivalent"),
        ("DPM++ 2S a Karras", None, "data.scheduler", "no diffusers equivalent"),
        ("dpm_fast", None, "data.scheduler", "no diffusers equivalent"),
        ("DPM adaptive", None, "data.scheduler", "no diffusers equivalent"),
        ("dpmpp_3m_sde", None, "data.scheduler", "no diffusers equivalent"),
        ("FooScheduler", None, "data.scheduler", "unknown diffusers scheduler class"),
        ("EulerDiscreteScheduler+solver_order=3", None, "data.scheduler", "not accepted"),
        ("EulerDiscreteScheduler+use_karras_sigmas+use_beta_sigmas", None, "data.scheduler", "one schedule"),
        ("EulerDiscreteScheduler(timestep_spacing='leading')", None, "data.scheduler", "timestep_spacing"),
        (
            "EulerDiscreteScheduler(timestep_spacing='trailing', use_karras_sigmas=True)",
            None,
            "data.scheduler",
            "timestep_spacing",
        ),
        ("DPMSolverMultistepScheduler(algorithm_type='dpmsolver')", None, "data.scheduler", "algorithm_type"),
        ("DPMSolverMultistepScheduler(use_karras_sigmas=maybe)", None, "data.scheduler", "true or false"),
        ("DPMSolverMultistepScheduler(((", None, "data.scheduler", "cannot read the flags"),
        ("LCMScheduler+karras", None, "data.scheduler", "LCMScheduler has no use_karras_sigmas"),
        (5, None, "data.scheduler", "must be a string"),
    ],
)
def test_refusals(scheduler, sampler, path: str, needle: str) -> None:
    with pytest.raises(ValidationFailed) as ei:
        resolve(scheduler, sampler)
    err = ei.value
    message, details = placed(err, "data")  # as a native answer names the field
    assert err.code == "validation_error"
    assert details and details[0]["path"] == path
    assert needle in message, message
    assert message.startswith(path)


def test_unknown_name_lists_accepted_names() -> None:
    with pytest.raises(ValidationFailed) as ei:
        resolve("euler_cfg_pp_turbo", None)
    msg = ei.value.message
    for name in ("Euler a", "DPM++ 2M", "DPM++ 2M SDE", "UniPC", "dpmpp_2m", "euler_ancestral", "uni_pc"):
        assert name in msg
    for name in ("DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler"):
        assert name in msg
    for sched in S.schedule_names():
        assert sched in msg
    assert ei.value.details[0]["message"] in msg


names = st.sampled_from(S.accepted_names() + S.schedule_names() + ["", " ", "+", "(", "Scheduler"])
fuzzy = st.one_of(
    st.none(),
    st.text(max_size=40),
    names,
    st.builds(lambda a, b: a + b, names, st.text(max_size=12)),
    st.builds(lambda a, b: a + "(" + b, st.sampled_from(list(S._CLASSES)), st.text(max_size=30)),
    st.builds(
        lambda a, b: a + "+" + b,
        st.sampled_from(list(S._CLASSES)),
        st.text(alphabet="usekarbtig_=+,'\"()lnpc ", max_size=30),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzy, fuzzy)
def test_resolve_only_raises_validation_failed(scheduler, sampler) -> None:
    try:
        choice = resolve(scheduler, sampler)
    except ValidationFailed as e:
        assert e.details and e.details[0]["path"] in ("scheduler", "sampler")
        return
    assert choice is None or choice in CATALOG


def test_table_is_consistent() -> None:
    # every algorithm name is reachable and no alias shadows another algorithm
    algos, scheds, _, none = S._tables()
    for a in S._ALGOS:
        for n in (a.id, *a.aliases):
            assert algos[S._norm(n)] is a, n
        if a.by_a1111_name:
            assert algos[S._norm(a.a1111)] is a
    assert not set(algos) & set(scheds)
    assert not set(algos) & set(none)
    ids = [c.id for c in CATALOG]
    assert len(ids) == len(set(ids))
    assert len(S.accepted_names()) == len(set(S.accepted_names()))


def _init_params(class_name: str) -> set[str]:
    """__init__ parameters of a diffusers scheduler class, read from its source (works for the
    classes diffusers only exposes as dummies when scipy/torchsde are missing)."""
    import diffusers.schedulers as ds

    folder = Path(ds.__file__).parent
    for path in folder.glob("scheduling_*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        return {a.arg for a in item.args.args + item.args.kwonlyargs}
    raise AssertionError(f"{class_name} not found in {folder}")


@pytest.mark.parametrize("class_name", sorted(S._CLASSES))
def test_flag_table_matches_installed_diffusers(class_name: str) -> None:
    params = _init_params(class_name)
    feat = S._CLASSES[class_name]
    assert set(S.SIGMA_FLAGS) <= params if feat.sigma_flags else not set(S.SIGMA_FLAGS) & params
    assert ("timestep_spacing" in params) == feat.spacing
    for c in CATALOG:
        if c.class_name == class_name:
            assert set(c.flags) <= params, (c.id, set(c.flags) - params)


# ---- building ------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", CATALOG, ids=lambda c: c.id)
def test_builds_from_sdxl_config_and_sets_timesteps(choice: SchedulerChoice) -> None:
    base = copy.deepcopy(SDXL_CONFIG)
    if not buildable(choice):
        with pytest.raises(Unsupported) as ei:
            build(choice, base)
        for pkg in S.missing_requirements(choice):
            assert pkg in ei.value.message and "pip install" in ei.value.message
        assert choice.display_name in ei.value.message
        return
    sched = build(choice, base)
    assert type(sched).__name__ == choice.class_name
    for k, v in choice.flags.items():
        assert sched.config[k] == v, (choice.id, k)
    # the model's own settings survive
    assert sched.config["beta_schedule"] == "scaled_linear"
    assert sched.config["num_train_timesteps"] == 1000
    sched.set_timesteps(10)
    assert len(sched.timesteps) >= 10
    assert base == SDXL_CONFIG, "base config mutated"
    want = choice.display_name.replace(" Simple", " SGM Uniform")
    assert display_name(sched) == want


def test_karras_then_plain_is_plain() -> None:
    base = copy.deepcopy(SDXL_CONFIG)
    k = build(resolve("DPM++ 2M Karras"), base)
    assert k.config.use_karras_sigmas is True
    plain = build(resolve("DPM++ 2M"), base)
    assert plain.config.use_karras_sigmas is False
    assert plain.config.algorithm_type == "dpmsolver++"
    assert display_name(plain) == "DPM++ 2M"
    e = build(resolve("Euler"), base)
    assert e.config.use_karras_sigmas is False and e.config.timestep_spacing == "leading"
    assert base == SDXL_CONFIG
    # and the schedules really differ
    k.set_timesteps(10)
    plain.set_timesteps(10)
    assert k.timesteps.tolist() != plain.timesteps.tolist()


def test_model_config_flags_do_not_leak() -> None:
    base = copy.deepcopy(DPM_KARRAS_CONFIG)
    plain = build(resolve("DPM++ 2M"), base)
    assert plain.config.use_karras_sigmas is False and plain.config.algorithm_type == "dpmsolver++"
    euler = build(resolve("euler"), base)
    assert type(euler).__name__ == "EulerDiscreteScheduler" and euler.config.use_karras_sigmas is False
    deis = build(resolve("deis"), base)
    assert deis.config.algorithm_type == "deis"
    unipc = build(resolve("uni_pc"), base)
    unipc.set_timesteps(10)
    assert base == DPM_KARRAS_CONFIG


def test_builds_from_a_frozen_config_object() -> None:
    from diffusers import PNDMScheduler

    model_sched = PNDMScheduler.from_config(SD15_CONFIG)
    before = dict(model_sched.config)
    for name in ("Euler a", "DPM++ 2M SDE Karras", "PLMS", "DDIM", "LCM"):
        s = build(resolve(name), model_sched.config)
        s.set_timesteps(10)
        assert display_name(s) == name
    assert dict(model_sched.config) == before
    assert display_name(model_sched) == "PLMS"


def test_flow_matching_models_refused() -> None:
    cfg = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    with pytest.raises(Unsupported, match="flow-matching"):
        build(resolve("Euler"), cfg)


def test_missing_packages_are_a_clear_error(monkeypatch) -> None:
    # whatever this environment has, pretend scipy / torchsde are missing
    monkeypatch.setattr(S, "_importable", lambda m: False)
    for name, pkg in (("LMS", "scipy"), ("Euler Beta", "scipy"), ("DPMSolverSDEScheduler", "torchsde")):
        choice = resolve(name)
        assert S.missing_requirements(choice) == [pkg]
        with pytest.raises(Unsupported) as ei:
            build(choice, SDXL_CONFIG)
        assert pkg in ei.value.message and ei.value.code == "unsupported"
    assert S.missing_requirements(resolve("DPM++ 2M Karras")) == []


def test_requirements_reported() -> None:
    assert resolve("LMS").requires == ("scipy",)
    assert resolve("LMS Beta").requires == ("scipy",)
    assert resolve("Euler Beta").requires == ("scipy",)
    assert resolve("DPMSolverSDEScheduler+karras").requires == ("torchsde",)
    assert resolve("DPM++ SDE").requires == ()  # DPMSolverSinglestepScheduler, per the docs table
    has_sde = importlib.util.find_spec("torchsde") is not None
    assert (S.missing_requirements(resolve("DPMSolverSDEScheduler")) == []) == has_sde


def test_display_name_of_built_and_foreign_schedulers() -> None:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    assert display_name(EulerDiscreteScheduler.from_config(SDXL_CONFIG)) == "Euler"
    assert display_name(DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")) == (
        "DPMSolverMultistepScheduler(algorithm_type=dpmsolver)"
    )
    assert display_name(DPMSolverMultistepScheduler(use_karras_sigmas=True)) == "DPM++ 2M Karras"
    assert display_name(DDPMScheduler()) == "DDPM"
    assert display_name(object()) == "object"
