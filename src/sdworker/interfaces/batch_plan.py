"""Planning inference.batch_process: every item checked, items grouped into shared calls, calls sized.

- plan_all: every item is validated and planned at submit time with GenerationInterface.plan. A
  bad item gets its own error entry (error_code, error, error_details with paths under
  `data.requests[i]`) and never sinks the others. If every item is bad the call still succeeds:
  the result lists one error per item and a warning; nothing is loaded or run. Only a malformed
  envelope (no `requests`, a bad `batch_config`) is a validation_error of the whole call.
- group: items share one diffusers call when everything that diffusers cannot vary per image in
  one call is equal: the model (path), device, mode, width, height, steps, the family's call
  options (guidance_scale; Flux: max_sequence_length and true CFG; HiDream: max_sequence_length),
  the scheduler choice (Flux/HiDream: the sampler and scheduler names), strength
  (img2img/inpainting only) and whether negative_prompt is None (SDXL zeroes the negative
  embedding for None but encodes "" otherwise, so None and text cannot share a call). Prompts,
  negative prompts, seeds and init/mask images go per image as lists. The call is made as the
  model's family makes a single request's (families/: prompt and call arguments, mode pipeline,
  scheduler). Family.batch_modes says which modes batch: SD and Flux (Fill too) every mode,
  HiDream text2img (its only mode). An item whose mode its family does not batch still runs: alone,
  as a group of its own (`alone`), in one call made exactly as its own inference.<mode> request's
  (the prompt and init/mask image as they are, num_images_per_prompt = num_images, its generator
  list), so it gives that request's images; batch_size and dynamic sizing do not split it. An item
  with num_images n expands to n images with seeds seed..seed+n-1, each with its own CPU
  generator (contract section 6). A group's images run in calls of at most batch_size images
  (an item's images may span two calls); with enable_dynamic_sizing fewer, see _images_per_call.
  Items that are invalid on their own are per-item errors; so, still, are items using what only
  a single request carries out (Plan.single_run_only, post_processing): send those alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..errors import ValidationFailed, WorkerError, from_validation, placed
from ..managers import modes
from ..managers.denoise import denoiser_of
from ..protocol.envelopes import map_inference_type
from ..schemas.batch import BatchRequest
from ..schemas.generation import GenerationRequest

if TYPE_CHECKING:
    from .generation import GenerationInterface, Plan


@dataclass
class BatchItem:
    index: int
    plan: Plan | None = None
    error: WorkerError | None = None


@dataclass
class Group:
    key: tuple
    items: list[BatchItem] = field(default_factory=list)
    #: one item whose mode its family does not batch: one call made as its own request's
    alone: bool = False

    @property
    def images(self) -> list[tuple[BatchItem, int]]:
        """(item, image index within the item), item-major: the order of the pipeline's lists."""
        return [(it, i) for it in self.items for i in range(it.plan.req.num_images)]  # type: ignore[union-attr]


@dataclass
class BatchPlan:
    session_id: str
    items: list[BatchItem]
    groups: list[Group]
    batch_size: int
    dynamic: bool
    threshold: float
    warnings: list[str]

    @property
    def model_id(self) -> str | None:
        for g in self.groups:
            return g.items[0].plan.ref.model_id  # type: ignore[union-attr]
        return None

    @property
    def device(self) -> str | None:
        for g in self.groups:
            return g.items[0].plan.device  # type: ignore[union-attr]
        return None


def group_key(plan: Plan) -> tuple:
    """What must be equal for two images to share one diffusers call (see the module docstring)."""
    req = plan.req
    return (
        str(plan.ref.source),  # a transformer file shares its companion folder's path, not its weights
        plan.device,
        plan.mode,
        plan.width,
        plan.height,
        req.steps,
        tuple(sorted(plan.family.call_kwargs(req, plan).items())),  # guidance_scale; Flux/HiDream: + their options
        plan.scheduler.id if plan.scheduler else None,
        None if plan.family.sd_schedulers else (req.sampler, req.scheduler),  # the family builds the scheduler from these
        req.strength if plan.mode != "text2img" else None,
        req.negative_prompt is None,
        tuple((p.item.model_id, p.weight) for p in plan.loras),  # one LoRA set per diffusers call
        repr(req.optimize),  # one set of speed options per diffusers call
    )


def _error_entry(exc: WorkerError) -> dict[str, Any]:
    message, details = placed(exc, "data")  # an entry of the result: paths as a native answer spells them
    return {"error_code": exc.code, "error": message, "error_details": list(details)}


def _reprefix(exc: WorkerError, index: int) -> WorkerError:
    """Point the detail paths of an item's error at the item: data.width -> data.requests[2].width."""
    prefix = f"data.requests[{index}]"
    exc.message, exc.details = placed(exc, "data")
    exc.details = [dict(d) for d in exc.details]
    exc.rooted = True  # final: the item's entry shows them as they are
    for d in exc.details:
        path = str(d.get("path", ""))
        if path == "data" or path.startswith("data."):
            d["path"] = prefix + path[4:]
        elif path and not path.startswith(prefix):
            d["path"] = f"{prefix}.{path}"
    return exc


class BatchPlanning:
    """BatchInterface's planning (on the reader thread, before queueing) and its call sizing."""

    gen: GenerationInterface

    def plan_all(self, params: BatchRequest, session_id: str) -> BatchPlan:
        warnings: list[str] = []
        items: list[BatchItem] = []
        for i, raw in enumerate(params.requests):
            try:
                plan = self._plan_one(raw, i, params, session_id)
                items.append(BatchItem(i, plan=plan))
            except WorkerError as exc:
                items.append(BatchItem(i, error=_reprefix(exc, i)))
        cfg = params.batch_config
        limit = self.gen.settings.max_batch_size
        batch_size = cfg.batch_size
        if batch_size > limit:
            warnings.append(f"batch_size {batch_size} is over this worker's max_batch_size; using {limit}")
            batch_size = limit
        if cfg.parallel_processing:
            warnings.append("parallel_processing is ignored: one device runs one pipeline call at a time")
        groups = self.group([it for it in items if it.plan is not None])
        for g in groups:
            if g.alone:
                lone = g.items[0].plan
                assert lone is not None
                batched = ", ".join(lone.family.batch_modes) or "no mode"
                warnings.append(
                    f"item {g.items[0].index}: {lone.mode} on {lone.ref.base_model} models does not batch (batch_process batches {batched} there); "
                    "it runs alone, as its own request would"
                )
        if not groups:
            warnings.append("no request of the batch is valid; nothing was run (see each item's error)")
        return BatchPlan(session_id, items, groups, batch_size, cfg.enable_dynamic_sizing, cfg.memory_threshold, warnings)

    def _plan_one(self, raw: Any, i: int, params: BatchRequest, session_id: str) -> Plan:
        if not isinstance(raw, dict):
            raise ValidationFailed("a batch item must be an object", [{"path": "data", "message": "expected an object"}])
        data = dict(raw)
        kinds = {k: data.pop(k) for k in ("type", "mode", "inference_type") if k in data}
        mode = "text2img"
        if kinds:
            names = {map_inference_type(v).split(".", 1)[1] for v in kinds.values()}
            if len(names) > 1:
                raise ValidationFailed(f"conflicting modes {sorted(names)}", [{"path": "data.type", "message": "conflicting type/mode"}])
            mode = names.pop()
            if mode not in modes.MODES:
                raise ValidationFailed(
                    f"{mode} cannot run in a batch; use one of {', '.join(modes.MODES)}",
                    [{"path": "data.type", "message": f"unsupported in a batch: {mode}"}],
                )
        data.pop("session_id", None)  # the batch is one session; items are named <session>-<index>
        if params.device_id is not None:
            data.setdefault("device_id", params.device_id)
        try:
            req = GenerationRequest.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc, "data") from None
        plan = self.gen.plan(req, mode, f"{session_id}-{i}")
        alone = plan.single_run_only + (["post_processing"] if req.post_processing else [])
        if alone:  # batched pipeline calls carry none of these: say so rather than drop them
            msg = f"{', '.join(alone)} cannot run inside batch_process; send this item as its own request"
            raise ValidationFailed(f"data.{alone[0]}: {msg}", [{"path": f"data.{name}", "message": msg} for name in alone])
        return plan

    @staticmethod
    def group(items: list[BatchItem]) -> list[Group]:
        """Compatible items together, in request order; groups of one model back to back. An item whose
        mode its family does not batch (Family.batch_modes) is a group of its own."""
        by_key: dict[tuple, Group] = {}
        for it in items:
            assert it.plan is not None
            key = group_key(it.plan)
            alone = it.plan.mode not in it.plan.family.batch_modes
            if alone:
                key += (("alone", it.index),)
            by_key.setdefault(key, Group(key, alone=alone)).items.append(it)
        models: list[str] = []
        for key in by_key:
            if key[0] not in models:
                models.append(key[0])
        return sorted(by_key.values(), key=lambda g: models.index(g.key[0]))  # stable: request order within a model

    # ---- memory ----------------------------------------------------------------------------------

    @staticmethod
    def estimate_image_bytes(pipe: Any, plan: Plan) -> int:
        """A rough, deliberately simple estimate of one image's working memory in a call.

        With T = latent positions ((W/f) x (H/f), f the VAE scale factor) and C the UNet's first block
        width: T*C*40 elements of UNet activations (the skip connections and intermediates of the
        full-resolution level; lower levels add less), plus T*T*8 for one attention score matrix of 8
        heads (the largest single tensor when attention is not memory-efficient), both doubled under
        classifier-free guidance; plus W*H*128*3 elements for the VAE decoder's full-resolution level.
        Times the element size of the UNet's dtype. Not a measurement: an order of magnitude that
        keeps a large batch from being tried where it clearly cannot fit.
        """
        f = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        t = (plan.width // f) * (plan.height // f)
        unet = getattr(pipe, "unet", None)
        channels = 320  # Flux, HiDream (no UNet): C stays 320
        elem = int(getattr(getattr(denoiser_of(pipe), "dtype", None), "itemsize", 4))
        if unet is not None:
            channels = int(list(getattr(unet.config, "block_out_channels", [320]))[0])
        cfg = 2 if plan.req.guidance_scale > 1.0 else 1
        elements = cfg * (t * channels * 40 + t * t * 8) + plan.width * plan.height * 128 * 3
        return elements * elem

    def available_bytes(self, device: str) -> int:
        torch = self.gen.runtime.torch
        if device.startswith("cuda") and torch is not None:
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        import psutil

        return int(psutil.virtual_memory().available)

    def _images_per_call(self, bplan: BatchPlan, pipe: Any, plan: Plan, device: str, notes: list[dict[str, Any]], warnings: list[str], g: int) -> int:
        if not bplan.dynamic:
            return bplan.batch_size
        per_image = self.estimate_image_bytes(pipe, plan)
        free = self.available_bytes(device)
        fit = max(1, int(bplan.threshold * free // max(per_image, 1)))
        size = min(bplan.batch_size, fit)
        notes.append({"group": g, "estimated_mb_per_image": round(per_image / 2**20, 1), "available_mb": round(free / 2**20, 1), "images_per_call": size})
        if size < bplan.batch_size:
            warnings.append(
                f"group {g}: {size} image(s) per call instead of {bplan.batch_size}: about {per_image / 2**20:.0f} MB per image "
                f"against {bplan.threshold:g} of {free / 2**20:.0f} MB free"
            )
        return size
