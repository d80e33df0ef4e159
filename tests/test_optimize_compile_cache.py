"""compile together with a step cache, through the real worker on tiny models (CPU).

The caches decide per denoiser call which blocks run; compiled code must not be specialised on
that decision (a graph per step, or new graphs for a longer run). So: the cache skips exactly what
it skips eager, the image stays within float rounding of the eager cached run, and once a model's
paths are compiled, a run with another seed and a longer run compile nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import Worker, decode_png, family_worker, tiny_models_dir

SD15 = {"model_id": "tiny-sd15", "prompt": "a red boat", "width": 64, "height": 64, "steps": 6, "guidance_scale": 6.0, "seed": 11}
SD3 = {"model_id": "tiny-sd35", "prompt": "a red boat", "width": 64, "height": 64, "steps": 6, "guidance_scale": 4.0, "seed": 5}
HIDREAM = {"model_id": "tiny-hidream", "prompt": "a red boat", "width": 128, "height": 128, "steps": 6, "seed": 5}
FLUX = {"model_id": "tiny-flux", "prompt": "a red boat", "width": 64, "height": 64, "steps": 6, "seed": 3}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models_dir(tmp_path_factory, "optcc", {"tiny-sd15": "sd15", "tiny-sd35": "sd35-large", "tiny-flux": "flux", "tiny-hidream": "hidream"})


@pytest.fixture(scope="module")
def w(root: Path, tmp_path_factory: pytest.TempPathFactory):
    wk = family_worker(root, tmp_path_factory, "optcc")
    yield wk
    wk.kill()


def _run(w: Worker, req: dict, **extra) -> dict:
    r = w.call("inference.text2img", {**req, **extra}, timeout=900)
    assert r["success"], r
    return r["data"]


def _img(data: dict) -> np.ndarray:
    return decode_png(data["images"][0]["base64"]).astype(np.int16)


@pytest.mark.parametrize(
    ("req", "cache"),
    [
        (SD15, {"kind": "deepcache", "interval": 2}),
        (SD3, {"kind": "taylorseer", "interval": 2, "start": 2}),
        (SD3, {"kind": "first_block", "threshold": 0.9}),
        (FLUX, {"kind": "first_block", "threshold": 0.5}),
        (HIDREAM, {"kind": "taylorseer", "interval": 2, "start": 2}),
    ],
    ids=["sd15-deepcache", "sd3-taylorseer", "sd3-first_block", "flux-first_block", "hidream-taylorseer"],
)
def test_compile_with_a_step_cache(w: Worker, req: dict, cache: dict) -> None:
    eager = _run(w, req, optimize={"cache": cache})
    first = _run(w, req, optimize={"cache": cache, "compile": True})
    # a second run may build one more graph: its first call meets a cache state left made, a path
    # the very first run never took (SD 3.5's last block under First Block Cache); then none
    _run(w, req, optimize={"cache": cache, "compile": True})
    again = _run(w, req, optimize={"cache": cache, "compile": True}, seed=req["seed"] + 1)
    longer = _run(w, req, optimize={"cache": cache, "compile": True}, steps=req["steps"] + 4)
    skipped = eager["performance"]["cache_skipped_steps"]
    assert skipped > 0 and first["performance"]["cache_skipped_steps"] == skipped
    assert first["performance"]["compiled_graphs"] > 0
    graphs = [again["performance"]["compiled_graphs"], longer["performance"]["compiled_graphs"]]
    assert graphs == [0, 0], graphs  # no graph per step, none for more steps
    assert np.abs(_img(first) - _img(eager)).max() <= 2


def test_compiled_code_persists_under_data_dir(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor's cache lives under --data-dir: a restarted worker compiles from it and adds nothing.

    The test process imported torch, which put its own default cache dir in the environment;
    a host's worker starts without it, so this one does too."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    data = tmp_path / "data"
    cache = data / "torch_compile" / "inductor"

    def files() -> set[Path]:
        return {p for p in cache.rglob("*") if p.is_file()}

    req = {**SD15, "steps": 2, "optimize": {"compile": True}}
    made = []
    for _ in range(2):
        wk = Worker(["--models-dir", str(root), "--output-dir", str(tmp_path / "out"), "--data-dir", str(data)])
        try:
            result = _run(wk, req)
        finally:
            wk.close()
        assert result["performance"]["compiled_graphs"] > 0  # a new process traces again...
        made.append(files())
    assert made[0], "nothing was written under --data-dir"
    assert made[1] == made[0]  # ...and inductor answers from the cache it wrote there


@pytest.mark.parametrize(("name", "blocks"), [("tiny-sd35", {"JointTransformerBlock"}), ("tiny-hidream", {"HiDreamBlock"}),
                                              ("tiny-flux", {"FluxTransformerBlock", "FluxSingleTransformerBlock"})])
def test_compile_regions_are_the_blocks(root: Path, name: str, blocks: set[str]) -> None:
    """Regional where diffusers names the repeated blocks (Flux) and where it does not (SD 3.5, HiDream)."""
    from diffusers import AutoModel

    from sdworker.managers.optimize.compiled import regions

    den = AutoModel.from_pretrained(str(root / name), subfolder="transformer")
    found = regions(den)
    assert {type(m).__name__ for m in found} == blocks and den not in found
