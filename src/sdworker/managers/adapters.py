"""LoRAs on a pipeline: named PEFT adapters, injected once, switched per run.

A LoRA's tensors come from the LoRAManager (read once into the RAM cache, keyed by content).
Applying it goes through diffusers' own loaders (``lora_state_dict`` converts kohya/civitai,
old diffusers and PEFT layouts, for Flux also sd-scripts' and ai-toolkit's; ``load_lora_into_unet``,
Flux's ``load_lora_into_transformer`` and ``load_lora_into_text_encoder`` inject PEFT layers),
component by component:

* The UNet and text encoders are shared cached objects (every pipeline of the same content, and
  every mode pipeline from ``from_pipe``, holds the same module). A LoRA is injected into a module
  once, as the adapter ``lora_<content key>``; later runs only pick adapters and weights with
  ``set_adapters``. Two models that share a text encoder share its injected adapters too: a
  component that already holds the adapter is skipped.
* Injected layers change the shared modules' forward for every pipeline that uses them, so
  every run must say which adapters it wants, none included. :meth:`AdapterManager.applied` sets
  them for the length of a call and disables every LoRA layer afterwards (and on errors): the
  resting state of a shared module is "no LoRA", which is exactly the base model (PEFT's disabled
  layers return the base layer's output untouched). Weight 0 is no LoRA, so it is left out.

Base checks come in two steps: the catalog's bases (an SD 1.5 LoRA on an SDXL model is refused at
plan time, naming both) and diffusers' own errors at injection (shape mismatches), which become
ModelLoadFailed with the first mismatch; a failed injection is rolled back.

One generation job runs on the device at a time, so the active adapter set of a shared module
belongs to the job that set it; a lock guards injection and activation anyway.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

from ..errors import ModelLoadFailed, ValidationFailed
from .memory import CacheEntry

if TYPE_CHECKING:
    from .catalog import CatalogItem, ModelCatalog
    from .lora import LoRAManager

log = logging.getLogger(__name__)

_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def family(base: str) -> str | None:
    """The LoRA group a base belongs to: bases whose LoRAs fit each other's models by layer shapes
    (Family.lora_groups); None: unknown, no check possible."""
    if not base or base == "unknown":
        return None
    from ..families import registry

    return registry.lora_groups().get(base, base)


def check_base(lora_id: str, lora_base: str, model_id: str, model_base: str, field_path: str = "loras") -> None:
    """Refuse a LoRA made for another architecture (an SD 1.5 LoRA on an SDXL model, ...)."""
    lf, mf = family(lora_base), family(model_base)
    if lf is None or mf is None or lf == mf:
        return
    message = f"LoRA {lora_id!r} was made for {lora_base} ({lf}); model {model_id!r} is {model_base} ({mf}): they do not fit"
    raise ValidationFailed(f"{field_path}: {message}", [{"path": field_path, "message": message}])


class LoRAUse(NamedTuple):
    """One LoRA of a run: ``(name, lora_id, entry, weight)`` plus the base the catalog gave it."""

    name: str  # as the request named it
    lora_id: str  # catalog id
    entry: CacheEntry  # LoRAManager.load(...): .obj is the state dict, .key its content identity
    weight: float
    base_model: str = "unknown"


@dataclass(frozen=True)
class PlannedLoRA:
    """A LoRA resolved at plan time (catalog item found, base checked); loaded at run time."""

    name: str
    item: "CatalogItem"
    weight: float
    source: str  # "request" (data.loras) or "prompt" (an A1111 tag)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "model_id": self.item.model_id, "weight": self.weight, "source": self.source}


def adapter_name(entry: CacheEntry) -> str:
    """The adapter name of a LoRA's content (the same file under two ids is one adapter)."""
    return "lora_" + "".join(ch for ch in entry.key if ch.isalnum())[:20]


def _short(exc: BaseException) -> str:
    """The first lines of diffusers'/PEFT's error (size-mismatch lists run to hundreds of lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    more = f" (and {len(lines) - 2} more lines)" if len(lines) > 2 else ""
    return (text[:400] + "...") if len(text) > 400 else text + more


def _lora_modules(pipe: Any) -> list[tuple[str, Any]]:
    """(component name, module) of the pipeline's LoRA-loadable parts that are present."""
    names = getattr(pipe, "_lora_loadable_modules", None) or _COMPONENTS
    return [(n, m) for n in names if (m := getattr(pipe, n, None)) is not None and hasattr(m, "modules")]


def _has_lora_layers(module: Any) -> bool:
    return bool(getattr(module, "peft_config", None))


class AdapterManager:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        # module -> {adapter name: whether diffusers injected layers for it (False: the LoRA has
        # no tensors for this component, nothing to inject, do not try again)}
        self._injected: "weakref.WeakKeyDictionary[Any, dict[str, bool]]" = weakref.WeakKeyDictionary()
        self.injections = 0  # LoRA injections into a module (one per LoRA per new module)
        self.activations = 0  # set_adapters calls

    # ---- plan time -----------------------------------------------------------------------------------

    @staticmethod
    def plan(
        catalog: "ModelCatalog",
        wanted: Sequence[tuple[str, float, str]],
        model_id: str,
        model_base: str,
        allow_pickle: bool = False,
    ) -> tuple[list[PlannedLoRA], list[str]]:
        """Resolve ``(name or path, weight, source)`` to catalog LoRAs and check their bases.

        The same LoRA named twice (data.loras and a prompt tag) keeps the last weight, with a warning.
        """
        from .locator import pickle_refused

        planned: dict[str, PlannedLoRA] = {}
        warnings: list[str] = []
        for i, (name, weight, source) in enumerate(wanted):
            path = f"loras[{i}]" if source == "request" else "prompt"
            item = catalog.find(name, "lora", path)
            if item.pickle and not allow_pickle:
                raise pickle_refused(name, path)
            check_base(item.model_id, item.base_model, model_id, model_base, path)
            if item.model_id in planned:
                warnings.append(f"LoRA {item.model_id!r} is named more than once; using weight {weight}")
            planned[item.model_id] = PlannedLoRA(name, item, float(weight), source)
        return list(planned.values()), warnings

    @staticmethod
    def load(loras: "LoRAManager", planned: Sequence[PlannedLoRA]) -> list[LoRAUse]:
        """Read the planned LoRAs (from the RAM cache when they are there)."""
        out = []
        for p in planned:
            try:
                entry = loras.load(p.item.path, p.item.model_id, p.item.base_model)
            except OSError as exc:  # gone since the plan (LoRAManager fingerprints the file first)
                raise ModelLoadFailed(f"LoRA {p.item.model_id!r} could not be read from {p.item.path.name}: {exc.strerror or exc}") from exc
            out.append(LoRAUse(p.name, p.item.model_id, entry, p.weight, p.item.base_model))
        return out

    # ---- run time --------------------------------------------------------------------------------------

    @contextmanager
    def applied(self, pipe: Any, loras: Sequence[LoRAUse], model_id: str = "", model_base: str = "unknown") -> Iterator[list[str]]:
        """These LoRAs (none: the base model) for the length of the block; LoRA layers off after it."""
        with self._lock:
            try:
                yield self.apply(pipe, loras, model_id, model_base)
            finally:
                self.deactivate(pipe)

    def apply(self, pipe: Any, loras: Sequence[LoRAUse], model_id: str = "", model_base: str = "unknown") -> list[str]:
        """Make exactly ``loras`` active on ``pipe`` (injecting what is new); returns warnings."""
        warnings: list[str] = []
        with self._lock:
            chosen: dict[str, LoRAUse] = {}
            for use in loras:
                check_base(use.lora_id, use.base_model, model_id, model_base)
                name = adapter_name(use.entry)
                if name in chosen:
                    warnings.append(f"LoRA {use.lora_id!r} is the same file as {chosen[name].lora_id!r}; using weight {use.weight}")
                chosen[name] = use
            active = {n: u for n, u in chosen.items() if u.weight != 0}
            if not active:
                self.deactivate(pipe)
                return warnings
            if not hasattr(pipe, "set_adapters"):
                raise ValidationFailed(f"loras: {type(pipe).__name__} cannot take LoRAs", [{"path": "loras", "message": "unsupported"}])
            for name, use in active.items():
                self._inject(pipe, name, use, model_id, model_base)
            pipe.enable_lora()  # a previous run (or applied()) may have disabled the layers
            pipe.set_adapters(list(active), adapter_weights=[float(u.weight) for u in active.values()])
            self.activations += 1
            return warnings

    def deactivate(self, pipe: Any) -> None:
        """Every LoRA layer of the pipeline's modules off: the base model's exact output."""
        with self._lock:
            from diffusers.utils.peft_utils import set_adapter_layers

            for _name, module in _lora_modules(pipe):
                if _has_lora_layers(module):
                    set_adapter_layers(module, enabled=False)

    def injected(self, module: Any) -> list[str]:
        """Adapter names this manager injected into ``module`` (with layers there)."""
        with self._lock:
            return sorted(n for n, layers in self._injected.get(module, {}).items() if layers)

    # ---- injection -------------------------------------------------------------------------------------

    def _needs(self, module: Any, name: str) -> bool:
        seen = self._injected.get(module, {})
        if name not in seen:
            return True
        # injected before, but removed since by someone else (unload_lora_weights): again
        return seen[name] and name not in (getattr(module, "peft_config", None) or {})

    def _inject(self, pipe: Any, name: str, use: LoRAUse, model_id: str, model_base: str) -> None:
        targets = [(c, m) for c, m in _lora_modules(pipe) if self._needs(m, name)]
        if not targets:
            return
        what = f"LoRA {use.lora_id!r}" + (f" ({use.base_model})" if use.base_model != "unknown" else "")
        target = f"model {model_id!r}" + (f" ({model_base})" if model_base != "unknown" else "")
        try:
            state, alphas, metadata = self._convert(pipe, use)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadFailed(f"{what} could not be read as a LoRA for {target}: {_short(exc)}") from exc
        done: list[Any] = []
        try:
            for component, module in targets:
                if component in ("unet", "transformer"):  # Flux: the transformer takes the denoiser's LoRA
                    load = pipe.load_lora_into_unet if component == "unet" else pipe.load_lora_into_transformer
                    alpha_kw = {"network_alphas": alphas} if "network_alphas" in inspect.signature(load).parameters else {}  # SD3 takes none
                    load(
                        state, **alpha_kw, **{component: module}, adapter_name=name, metadata=metadata,
                        _pipeline=pipe, low_cpu_mem_usage=False,
                    )
                elif any(k.startswith(f"{component}.") for k in state):
                    pipe.load_lora_into_text_encoder(
                        state, network_alphas=alphas, text_encoder=module, prefix=component,
                        lora_scale=pipe.lora_scale, adapter_name=name, metadata=metadata,
                        _pipeline=pipe, low_cpu_mem_usage=False,
                    )
                done.append(module)
        except Exception as exc:  # noqa: BLE001
            self._roll_back(name, [*done, targets[len(done)][1]])
            raise ModelLoadFailed(f"{what} does not fit {target}: {_short(exc)}") from exc
        if not any(name in (getattr(m, "peft_config", None) or {}) for _c, m in _lora_modules(pipe)):
            raise ModelLoadFailed(f"{what} has no layer that matches {target} ({len(use.entry.obj)} tensors, none used)")
        for module in done:
            self._injected.setdefault(module, {})[name] = name in (getattr(module, "peft_config", None) or {})
        self.injections += 1
        log.info("LoRA %s injected as %s into %s", use.lora_id, name, ", ".join(c for c, _m in targets))

    @staticmethod
    def _convert(pipe: Any, use: LoRAUse) -> tuple[dict[str, Any], Any, Any]:
        """diffusers' conversion of the cached state dict (a shallow copy: the cache stays as read)."""
        from diffusers.loaders import FluxLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

        kwargs: dict[str, Any] = {"return_lora_metadata": True}
        if isinstance(pipe, StableDiffusionXLLoraLoaderMixin):
            kwargs["unet_config"] = pipe.unet.config  # SGM (input_blocks_*) names need the block layout
        if isinstance(pipe, FluxLoraLoaderMixin):
            kwargs["return_alphas"] = True  # Flux's lora_state_dict returns alphas only when asked
        read = pipe.lora_state_dict(dict(use.entry.obj), **kwargs)
        # SD3's loader returns (state, metadata): its LoRAs carry no network alphas
        state, alphas, metadata = read if len(read) == 3 else (read[0], None, read[1])
        if not state or not all("lora" in key for key in state):
            raise ValueError("its tensors are not LoRA layers (no lora_down/lora_up, lora_A/lora_B or lora.down/lora.up)")
        if isinstance(pipe, FluxLoraLoaderMixin):
            # as FluxLoraLoaderMixin.load_lora_weights does: zero-pad x_embedder LoRAs for wider
            # inputs (a dev LoRA on a Fill model); a no-op when the shapes agree
            own = {k: v for k, v in state.items() if k.startswith(f"{pipe.transformer_name}.")}
            if own:
                state = {**state, **pipe._maybe_expand_lora_state_dict(transformer=pipe.transformer, lora_state_dict=own)}
        return state, alphas, metadata

    @staticmethod
    def _roll_back(name: str, modules: list[Any]) -> None:
        """Remove a half-injected adapter, so a failed LoRA leaves the shared modules as they were."""
        from diffusers.utils.peft_utils import delete_adapter_layers

        for module in modules:
            try:
                if name in (getattr(module, "peft_config", None) or {}):
                    if hasattr(module, "delete_adapters"):
                        module.delete_adapters([name])
                    else:
                        delete_adapter_layers(module, name)
            except Exception:  # noqa: BLE001
                log.warning("could not remove the half-injected adapter %s", name, exc_info=True)
