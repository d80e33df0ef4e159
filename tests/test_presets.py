"""The preset store without a worker: SQLite plumbing, CRUD, built-ins, resolve, populate, the
MongoDB import/export (with a hypothesis property for the Extended JSON parser), and crash safety
(a writer process SIGKILLed mid-write leaves a consistent database)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdworker.managers.locator import ModelRef
from sdworker.errors import ValidationFailed
from sdworker.schemas.generation import GenerationRequest
from sdworker.store import builtin_presets as bp
from sdworker.store.db import DB_FILE, MIGRATIONS, Database, DatabaseError, Migration
from sdworker.store.presets import (
    PresetStore,
    apply_preset,
    decode_ejson,
    detect_base_model,
    document_to_row,
    iter_documents,
    parse_time,
    row_to_document,
)

# ---- helpers --------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> PresetStore:
    s = PresetStore(Database(tmp_path / DB_FILE))
    yield s
    s.db.close()


def quality(model_id: str = "m1", **extra) -> dict:
    return {"model_id": model_id, "base_model": "sdxl", "configuration_type": "quality", "steps": 30, "cfg_scale": 7.0,
            "sampler": "dpmpp_2m", "scheduler": "karras", "model_specific_params": {"width": 1024, "height": 1024}, **extra}


def fake_ref(tmp_path: Path, model_id: str, cls: str, base: str, index: dict | None = None, transformer: dict | None = None) -> ModelRef:
    folder = tmp_path / "models" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls, **(index or {})}))
    if transformer is not None:
        (folder / "transformer").mkdir(exist_ok=True)
        (folder / "transformer" / "config.json").write_text(json.dumps(transformer))
    return ModelRef(model_id, folder, cls, base)


# ---- the database ---------------------------------------------------------------------------------------


def test_database_opens_lazily_in_wal_at_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "d" / DB_FILE
    db = Database(path)
    assert not path.exists()  # nothing opened by construction
    assert db.schema_version() == len(MIGRATIONS) == db.latest_version
    with db.read() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"inference_configurations", "schema_migrations", "ix_inference_configurations_model_id",
                "ix_inference_configurations_base_model"} <= names
        assert [tuple(r)[:2] for r in conn.execute("SELECT version, name FROM schema_migrations")] == [(m.version, m.name) for m in MIGRATIONS]
        assert [tuple(r)[:2] for r in conn.execute("SELECT version, name FROM schema_migrations")][0] == (1, "inference_configurations")
    db.close()
    again = Database(path)  # reopening runs nothing twice
    assert again.schema_version() == len(MIGRATIONS)
    again.close()


def test_migrations_are_generic_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    Database(path).close()
    Database(path).schema_version()
    nxt = len(MIGRATIONS) + 1  # the next version this code does not know
    bad = MIGRATIONS + (Migration(nxt, "ledger", ("CREATE TABLE ledger (x INTEGER)", "THIS IS NOT SQL")),)
    with pytest.raises(sqlite3.OperationalError):
        Database(path, bad).schema_version()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert check.execute("SELECT name FROM sqlite_master WHERE name = 'ledger'").fetchone() is None  # rolled back whole
    check.close()
    good = MIGRATIONS + (Migration(nxt, "ledger", ("CREATE TABLE ledger (x INTEGER)", lambda c: c.execute("INSERT INTO ledger VALUES (1)"))),)
    db = Database(path, good)
    assert db.schema_version() == nxt
    with db.read() as conn:
        assert conn.execute("SELECT x FROM ledger").fetchall()[0][0] == 1
    db.close()
    with pytest.raises(DatabaseError, match="newer than this sdworker"):
        Database(path).schema_version()  # the code knows only up to len(MIGRATIONS)
    with pytest.raises(ValueError, match=f"expected {nxt}"):
        Database(path, MIGRATIONS + (Migration(nxt + 1, "gap", ()),))


def test_transaction_rolls_back_on_error_and_nests_as_savepoint(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_FILE)
    store = PresetStore(db)
    with pytest.raises(RuntimeError):
        with db.transaction() as conn:
            store._insert(conn, {**quality(), "id": "a", "created_at": "x", "updated_at": "x"})
            raise RuntimeError("boom")
    assert store.count() == 0
    with db.transaction() as conn:
        store._insert(conn, {**quality("m1"), "id": "a", "created_at": "x", "updated_at": "x"})
        with pytest.raises(RuntimeError):
            with db.transaction() as inner:
                store._insert(inner, {**quality("m2"), "id": "b", "created_at": "x", "updated_at": "x"})
                raise RuntimeError("inner")
    assert [p["id"] for p in store.list()[0]] == ["a"]
    db.close()


def test_readers_run_while_a_write_transaction_is_open(tmp_path: Path) -> None:
    store = PresetStore(Database(tmp_path / DB_FILE))
    store.create(quality("before"))
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.db.transaction() as conn:
            store._insert(conn, {**quality("during"), "id": "w", "created_at": "x", "updated_at": "x"})
            inside.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(10)
    t0 = time.monotonic()
    seen = [p["model_id"] for p in store.list()[0]]  # another thread: WAL snapshot, no waiting
    assert time.monotonic() - t0 < 1.0
    assert seen == ["before"]
    release.set()
    t.join(10)
    assert sorted(p["model_id"] for p in store.list()[0]) == ["before", "during"]
    store.db.close()


def test_in_memory_database_is_shared_by_threads() -> None:
    store = PresetStore(Database(None))
    assert store.db.location == ":memory:" and not store.db.persistent
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            store.create(quality(f"m{i}"))
            store.list()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and store.count() == 8


# ---- CRUD -----------------------------------------------------------------------------------------------


def test_crud(store: PresetStore) -> None:
    p = store.create(quality())
    uuid.UUID(p["id"])
    assert p["origin"] == "model" and p["created_at"] == p["updated_at"] and p["created_at"].endswith("Z")
    assert store.get(p["id"]) == p
    time.sleep(0.002)
    u = store.update(p["id"], {"steps": 28, "sampler": None, "model_specific_params": {"clip_skip": 2}})
    assert (u["steps"], u["sampler"], u["model_specific_params"]) == (28, None, {"clip_skip": 2})
    assert u["created_at"] == p["created_at"] and u["updated_at"] > p["updated_at"]
    s = store.create({**quality(), "configuration_type": "speed", "steps": 12, "id": str(uuid.uuid4())})
    assert [x["configuration_type"] for x in store.list(model_id="m1")[0]] == ["quality", "speed"]
    assert [x["id"] for x in store.list(configuration_type="speed")[0]] == [s["id"]]
    assert store.list(base_model="pony") == ([], 0)
    assert store.delete(p["id"]) == {"deleted": True, "id": p["id"]}
    with pytest.raises(ValidationFailed, match=p["id"]) as e:
        store.get(p["id"])
    assert e.value.details[0]["path"] == "data.id"
    with pytest.raises(ValidationFailed, match="no preset with id"):
        store.delete(p["id"])
    with pytest.raises(ValidationFailed, match="no preset with id"):
        store.update("nope", {"steps": 3})


def test_unique_model_and_type_is_a_clear_conflict(store: PresetStore) -> None:
    first = store.create(quality())
    with pytest.raises(ValidationFailed) as e:
        store.create(quality(steps=10))
    assert e.value.code == "validation_error"
    assert f"conflicts with preset id {first['id']}" in e.value.message
    assert e.value.details[0]["path"] == "data.configuration_type"
    other = store.create({**quality(), "configuration_type": "speed"})
    with pytest.raises(ValidationFailed, match=f"conflicts with preset id {first['id']}"):
        store.update(other["id"], {"configuration_type": "quality"})
    with pytest.raises(ValidationFailed, match=f"conflicts with preset id {first['id']}"):
        store.create({**quality("m2"), "id": first["id"]})
    assert store.count() == 2


def test_list_pages_and_builtins(store: PresetStore) -> None:
    for i in range(5):
        store.create(quality(f"m{i}"))
    page, total = store.list(limit=2, offset=1)
    assert total == 5 and [p["model_id"] for p in page] == ["m1", "m2"]
    both, total = store.list(base_model="sdxl", include_builtin=True)
    assert total == 7 and [p["origin"] for p in both[-2:]] == ["builtin", "builtin"]
    assert len(store.list(include_builtin=True)[0]) == 5 + len(bp.BUILTIN_PRESETS)
    b = both[-1]
    assert store.get(b["id"]) == b and b["model_id"] is None and b["source"]
    with pytest.raises(ValidationFailed, match="read-only"):
        store.update(b["id"], {"steps": 1})
    with pytest.raises(ValidationFailed, match="cannot be deleted"):
        store.delete(b["id"])


# ---- built-ins --------------------------------------------------------------------------------------------

NINE = ("sdxl", "pony", "sd_1_5", "flux_dev", "flux_schnell", "flux_krea", "hidream", "wan_2_1", "wan_2_2")
#: the base models with built-in presets: the nine above, and SD 3.5 (each family package keeps its own)
WITH_PRESETS = NINE + ("sd3",)


def test_builtins_cover_every_architecture_and_follow_the_recommendations() -> None:
    import importlib

    from sdworker.families import FAMILIES

    assert set(bp.BASE_MODELS) == set(WITH_PRESETS)
    # the sources are listed in each family's presets module (families/<name>/presets.py)
    cited = (bp.__doc__ or "") + "".join(importlib.import_module(f"sdworker.families.{f.name}.presets").__doc__ or "" for f in FAMILIES)
    ids = set()
    for base in WITH_PRESETS:
        q, s = bp.builtin(base, "quality"), bp.builtin(base, "speed")
        assert q is not None and s is not None, base
        ids |= {q.id, s.id}
        for p in (q, s):
            tags = re.findall(r"\[[a-z0-9-]+\]", p.source)
            assert tags and all(f"- {tag} " in cited for tag in tags), p  # each cited source is listed in the docstring
        assert s.steps <= q.steps and s.cfg_scale <= q.cfg_scale, base
    for base in ("sdxl", "pony", "sd_1_5"):
        q, s = bp.builtin(base, "quality"), bp.builtin(base, "speed")
        assert 25 <= q.steps <= 30 and (q.sampler, q.scheduler) == ("dpmpp_2m", "karras") and 7.0 <= q.cfg_scale <= 7.5
        assert 8 <= s.steps <= 15 and s.sampler in ("euler", "euler_a") and s.cfg_scale < q.cfg_scale
    assert bp.builtin("pony", "quality").model_specific_params["clip_skip"] == 2
    schnell = bp.builtin("flux_schnell", "quality")
    assert schnell.steps == 4 and schnell.cfg_scale == 1.0 and schnell.model_specific_params["guidance"] == 0.0
    assert bp.builtin("flux_dev", "quality").model_specific_params["guidance"] == 3.5
    assert bp.builtin("wan_2_2", "quality").model_specific_params["guidance_scale_2"] == 3.0
    q3 = bp.builtin("sd3", "quality")
    assert (q3.steps, q3.cfg_scale, q3.sampler) == (28, 3.5, "euler")  # the SD 3.5 Large card
    assert len(ids) == 20 and bp.builtin_id("sdxl", "quality") == bp.builtin("sdxl", "quality").id  # stable uuid5 ids


# ---- detection, resolve, populate -------------------------------------------------------------------------


def test_detect_base_model(tmp_path: Path) -> None:
    assert detect_base_model(fake_ref(tmp_path, "sdxl-base", "StableDiffusionXLPipeline", "sdxl")) == "sdxl"
    assert detect_base_model(fake_ref(tmp_path, "ponyDiffusionV6XL", "StableDiffusionXLPipeline", "sdxl")) == "pony"
    assert detect_base_model(fake_ref(tmp_path, "sd15", "StableDiffusionPipeline", "sd_1_5")) == "sd_1_5"
    assert detect_base_model(fake_ref(tmp_path, "f1", "FluxPipeline", "unknown", transformer={"guidance_embeds": False})) == "flux_schnell"
    assert detect_base_model(fake_ref(tmp_path, "f2", "FluxPipeline", "unknown", transformer={"guidance_embeds": True})) == "flux_dev"
    assert detect_base_model(fake_ref(tmp_path, "FLUX.1-Krea-dev", "FluxPipeline", "unknown", transformer={"guidance_embeds": True})) == "flux_krea"
    assert detect_base_model(fake_ref(tmp_path, "f3", "FluxPipeline", "unknown")) == "flux"
    assert detect_base_model(fake_ref(tmp_path, "hd", "HiDreamImagePipeline", "unknown")) == "hidream"
    assert detect_base_model(fake_ref(tmp_path, "w21", "WanPipeline", "unknown")) == "wan_2_1"
    two = {"transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}
    assert detect_base_model(fake_ref(tmp_path, "w22", "WanPipeline", "unknown", index=two)) == "wan_2_2"
    assert detect_base_model(fake_ref(tmp_path, "x", "SomethingElse", "unknown")) == "unknown"


def test_resolve_prefers_the_model_then_its_base_model(tmp_path: Path, store: PresetStore) -> None:
    b = store.resolve("speed", base_model="sdxl")
    assert b["origin"] == "builtin" and b["id"] == bp.builtin_id("sdxl", "speed")
    own = store.create(quality("mine", base_model="pony"))
    assert store.resolve("quality", model_id="mine") == own
    fallback = store.resolve("speed", model_id="mine")  # no speed row: the base model the rows name
    assert fallback["origin"] == "builtin" and fallback["base_model"] == "pony"
    assert store.resolve("speed", model_id="other", base_model="sd_1_5")["base_model"] == "sd_1_5"
    with pytest.raises(ValidationFailed, match="no quality preset for base_model 'sd_2'"):
        store.resolve("quality", base_model="sd_2")
    with pytest.raises(ValidationFailed, match="base_model is required"):
        store.resolve("quality", model_id="not-stored")  # no locator to detect it with


def test_populate_creates_missing_presets_once(tmp_path: Path, store: PresetStore) -> None:
    refs = [
        fake_ref(tmp_path, "a-sdxl", "StableDiffusionXLPipeline", "sdxl"),
        fake_ref(tmp_path, "b-flux", "FluxPipeline", "unknown", transformer={"guidance_embeds": False}),
        fake_ref(tmp_path, "c-sd2", "StableDiffusionPipeline", "sd_2"),
    ]
    store.create({**quality("a-sdxl"), "steps": 99})
    dry = store.populate(refs, dry_run=True)
    assert (dry["created"], dry["skipped"], store.count()) == (3, 3, 1)
    first = store.populate(refs)
    assert (first["created"], first["skipped"]) == (3, 3)
    by_model = {m["model_id"]: m for m in first["models"]}
    assert by_model["a-sdxl"]["created"] == ["speed"] and by_model["a-sdxl"]["reason"] == "exists"
    assert by_model["b-flux"]["base_model"] == "flux_schnell" and by_model["b-flux"]["created"] == ["quality", "speed"]
    assert by_model["c-sd2"]["created"] == [] and "no built-in" in by_model["c-sd2"]["reason"]
    assert store.find("a-sdxl", "quality")["steps"] == 99  # existing one untouched
    second = store.populate(refs)
    assert (second["created"], second["skipped"], second["items"]) == (0, 6, [])
    assert store.count() == 4


# ---- applying a preset to a request ---------------------------------------------------------------------


def test_apply_preset_goes_under_what_the_request_sets() -> None:
    preset = {**quality(), "id": "p", "origin": "model", "model_specific_params": {"width": 512, "height": 768, "clip_skip": 2}}
    req = GenerationRequest.model_validate({"prompt": "x", "steps": 5})
    new, applied = apply_preset(req, preset)
    assert (new.steps, new.guidance_scale, new.width, new.height) == (5, 7.0, 512, 768)
    assert applied == {"guidance_scale": 7.0, "width": 512, "height": 768, "clip_skip": 2}
    req = GenerationRequest.model_validate({"prompt": "x", "cfg_scale": 3, "width": 64})
    new, applied = apply_preset(req, preset)
    assert (new.steps, new.guidance_scale, new.width, new.height) == (30, 3.0, 64, 768)
    flux = {**bp.builtin("flux_dev", "quality").__dict__, "id": "f", "origin": "builtin"}
    new, _ = apply_preset(GenerationRequest.model_validate({}), flux)
    assert new.guidance_scale == 3.5  # distilled guidance is what diffusers' guidance_scale means for Flux
    new, applied = apply_preset(GenerationRequest.model_validate({}), flux, keep=("steps", "guidance_scale"))
    assert "steps" not in applied and "guidance_scale" not in applied and applied["max_sequence_length"] == 512
    assert {"steps", "guidance_scale"}.isdisjoint(new.model_fields_set)  # left for the family's own defaults
    bad = {**preset, "model_specific_params": {"width": 1001}}
    with pytest.raises(ValidationFailed, match="multiple of 8") as e:
        apply_preset(GenerationRequest.model_validate({}), bad)
    assert e.value.details[0]["path"] == "data.preset"


# ---- MongoDB import / export ---------------------------------------------------------------------------

MONGOEXPORT = (
    '{"_id":{"$oid":"65f1c2a9e4b0a1b2c3d4e5f6"},"id":"0b6f6f3e-6d0a-4c44-9a55-1b2f2d3c4e5f","model_id":"juggernautXL",'
    '"base_model":"sdxl","configuration_type":"quality","steps":30,"cfg_scale":7.0,"sampler":"dpmpp_2m","scheduler":"karras",'
    '"model_specific_params":{"width":1024,"height":1024,"clip_skip":1},"created_at":{"$date":"2024-03-13T15:04:41.123Z"},'
    '"updated_at":{"$date":"2024-03-14T09:00:00Z"},"__v":0}\r\n'
    "\r\n"
    '{"_id":{"$oid":"65f1c2a9e4b0a1b2c3d4e5f7"},"id":"1c7f7f4e-7e1b-4d55-8b66-2c3e3e4d5f60","model_id":"flux1-dev",'
    '"base_model":"flux_dev","configuration_type":"speed","steps":{"$numberInt":"20"},"cfg_scale":{"$numberDouble":"1.0"},'
    '"sampler":"euler","scheduler":"simple","model_specific_params":{"guidance":{"$numberDouble":"3.5"},'
    '"width":{"$numberLong":"1024"}},"created_at":{"$date":{"$numberLong":"1710342281000"}},'
    '"updated_at":{"$date":1710342281000},"notes":"legacy v1 date above"}\n'
)


def _decoded(doc: dict) -> dict:
    return {k: decode_ejson(v) for k, v in doc.items()}


def test_mongoexport_import_round_trips(store: PresetStore) -> None:
    result = store.import_jsonl("\ufeff" + MONGOEXPORT)
    assert result == {"total": 2, "imported": 2, "replaced": 0, "skipped": 0, "skipped_ids": []}
    flux = store.get("1c7f7f4e-7e1b-4d55-8b66-2c3e3e4d5f60")
    assert (flux["steps"], flux["cfg_scale"], flux["model_specific_params"]) == (20, 1.0, {"guidance": 3.5, "width": 1024})
    assert flux["created_at"] == "2024-03-13T15:04:41.000Z" == flux["updated_at"]
    exported = store.export_jsonl()
    original = [json.loads(line) for line in MONGOEXPORT.splitlines() if line.strip()]
    again = [json.loads(line) for line in exported.splitlines()]
    assert [_decoded(d) for d in again] == [_decoded(d) for d in original]  # same documents, _id and extra fields included
    assert again[0]["_id"] == {"$oid": "65f1c2a9e4b0a1b2c3d4e5f6"} and again[0]["__v"] == 0
    assert again[0]["created_at"] == {"$date": "2024-03-13T15:04:41.123Z"}
    # and back into an empty database: identical export
    other = PresetStore(Database(None))
    other.import_jsonl(exported)
    assert other.export_jsonl() == exported


def test_import_is_all_or_nothing_and_handles_conflicts(store: PresetStore) -> None:
    bad = MONGOEXPORT + '{"model_id":"x","base_model":"sdxl","configuration_type":"fast","steps":3,"cfg_scale":1}\nnot json\n'
    with pytest.raises(ValidationFailed) as e:
        store.import_jsonl(bad)
    assert store.count() == 0
    assert [d["path"] for d in e.value.details] == ["data.jsonl[4]", "data.jsonl[5]"]
    assert "configuration_type" in e.value.details[0]["message"]
    store.import_jsonl(MONGOEXPORT)
    with pytest.raises(ValidationFailed, match="conflicts with preset id 0b6f6f3e"):
        store.import_jsonl(MONGOEXPORT)
    skipped = store.import_jsonl(MONGOEXPORT, on_conflict="skip")
    assert (skipped["imported"], skipped["skipped"]) == (0, 2)
    changed = MONGOEXPORT.replace('"steps":30', '"steps":31')
    replaced = store.import_jsonl(changed, on_conflict="replace")
    assert (replaced["imported"], replaced["replaced"]) == (2, 2)
    assert store.find("juggernautXL", "quality")["steps"] == 31 and store.count() == 2


def test_import_accepts_a_json_array_and_canonical_forms() -> None:
    docs = [json.loads(line) for line in MONGOEXPORT.splitlines() if line.strip()]
    assert [line for line, _ in iter_documents(json.dumps(docs))] == [1, 2]
    raw = uuid.UUID("0b6f6f3e-6d0a-4c44-9a55-1b2f2d3c4e5f").bytes
    b64 = base64.b64encode(raw).decode()
    assert decode_ejson({"$binary": {"base64": b64, "subType": "04"}}) == "0b6f6f3e-6d0a-4c44-9a55-1b2f2d3c4e5f"
    assert decode_ejson({"$binary": b64, "$type": "4"}) == "0b6f6f3e-6d0a-4c44-9a55-1b2f2d3c4e5f"
    assert decode_ejson({"$uuid": "0b6f6f3e6d0a4c449a551b2f2d3c4e5f"}) == "0b6f6f3e-6d0a-4c44-9a55-1b2f2d3c4e5f"
    assert parse_time("2024-03-13T17:04:41.5+02:00") == "2024-03-13T15:04:41.500Z"
    assert parse_time({"$numberLong": "-1000"}) == "1969-12-31T23:59:59.000Z"
    with pytest.raises(ValueError, match="finite"):
        decode_ejson({"$numberDouble": "NaN"})
    row = document_to_row({"model_id": "m", "base_model": "sdxl", "configuration_type": "Quality", "steps": 30.0, "cfg_scale": 7})
    uuid.UUID(row["id"])
    assert row["configuration_type"] == "quality" and row["steps"] == 30 and row["mongo_id"]["$oid"]


# The property: any document, written in any of mongoexport's encodings, parses to the same values,
# and an export of what was imported reads back to those values again.

_texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(lambda s: s.strip() == s)
_ms = st.integers(min_value=-(10**12), max_value=253402300799999)  # year 1938 .. 9999
_floats = st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda f: round(f, 3))


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _iso(ms: int) -> str:
    return parse_time(ms)


@st.composite
def encoded_documents(draw):  # -> (the mongoexport text of one document, the values it must parse to)
    want = {
        "id": str(draw(st.uuids())),
        "model_id": draw(_texts),
        "base_model": draw(st.sampled_from(NINE + ("unknown", "some_future_arch"))),
        "configuration_type": draw(st.sampled_from(["quality", "speed"])),
        "steps": draw(st.integers(1, 10**6)),
        "cfg_scale": draw(_floats),
        "sampler": draw(st.none() | _texts),
        "scheduler": draw(st.none() | _texts),
        "model_specific_params": draw(st.dictionaries(st.sampled_from(["width", "height", "clip_skip", "x"]), st.integers(0, 4096), max_size=4)),
        "created_at": _iso(draw(_ms)),
        "updated_at": _iso(draw(_ms)),
    }
    style = draw(st.sampled_from(["relaxed", "canonical", "legacy"]))
    oid = draw(st.binary(min_size=12, max_size=12)).hex()

    def num(v, kind):
        if style == "canonical":
            return {"$numberInt" if kind == "int" and abs(v) < 2**31 else ("$numberLong" if kind == "int" else "$numberDouble"): str(v)}
        return v

    def date(iso):
        dt = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        ms = (dt - EPOCH) // timedelta(milliseconds=1)
        if style == "canonical" or dt.year < 1970:  # relaxed mode writes pre-1970 dates canonically too
            return {"$date": {"$numberLong": str(ms)}}
        return {"$date": ms} if style == "legacy" else {"$date": iso}

    doc = {"_id": {"$oid": oid}}
    for k, v in want.items():
        if k in ("steps",):
            doc[k] = num(v, "int")
        elif k == "cfg_scale":
            doc[k] = num(v, "double")
        elif k == "model_specific_params":
            doc[k] = {kk: num(vv, "int") for kk, vv in v.items()}
        elif k in ("created_at", "updated_at"):
            doc[k] = date(v)
        elif k == "id" and draw(st.booleans()):
            doc[k] = {"$binary": {"base64": base64.b64encode(uuid.UUID(v).bytes).decode(), "subType": "04"}}
        else:
            doc[k] = v
    return json.dumps(doc, ensure_ascii=draw(st.booleans())), want, oid


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoded_documents())
def test_mongoexport_parser_property(case) -> None:
    line, want, oid = case
    ((n, doc),) = list(iter_documents(line + "\r\n"))
    row = document_to_row(doc)
    assert {k: row[k] for k in want} == want
    assert row["mongo_id"] == {"$oid": oid}
    back = json.loads(json.dumps(row_to_document(row)))
    again = document_to_row(back)
    assert {k: again[k] for k in want} == want and again["mongo_id"] == row["mongo_id"]


# ---- crash safety ---------------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys, uuid
    from pathlib import Path
    from sdworker.store.db import Database
    from sdworker.store.presets import PresetStore
    store = PresetStore(Database(Path(sys.argv[1])))
    mode = sys.argv[2]
    if mode == "creates":
        for i in range(100000):
            p = store.create({"model_id": f"m{i}", "base_model": "sdxl", "configuration_type": "quality", "steps": 30,
                              "cfg_scale": 7.0, "sampler": "dpmpp_2m", "scheduler": "karras",
                              "model_specific_params": {"width": 1024, "height": 1024, "pad": "x" * 2000}})
            print(p["id"], flush=True)
    else:
        lines = "".join(
            '{"id":"%s","model_id":"bulk%d","base_model":"sdxl","configuration_type":"speed","steps":12,"cfg_scale":5,'
            '"model_specific_params":{"pad":"%s"}}\\n' % (uuid.uuid4(), i, "y" * 500) for i in range(int(mode))
        )
        print("importing", flush=True)
        store.import_jsonl(lines)
        print("done", flush=True)
    """
)


def _assert_consistent(path: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)  # a plain client, as a host's tooling would open it
    conn.row_factory = sqlite3.Row
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        rows = conn.execute("SELECT * FROM inference_configurations").fetchall()
        for r in rows:
            for col in ("id", "model_id", "base_model", "configuration_type", "steps", "cfg_scale", "created_at", "updated_at"):
                assert r[col] not in (None, ""), (col, dict(r))
            assert isinstance(json.loads(r["model_specific_params"]), dict)
        return rows
    finally:
        conn.close()


def test_sigkill_mid_writes_leaves_a_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "creates"], stdout=subprocess.PIPE, text=True)
    committed: list[str] = []
    assert proc.stdout is not None
    while len(committed) < 60:
        line = proc.stdout.readline()
        assert line, "writer died early"
        committed.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    rows = _assert_consistent(path)
    ids = {r["id"] for r in rows}
    assert set(committed) <= ids  # every answered write survived
    assert len(ids) >= len(committed)
    for r in rows:
        assert len(json.loads(r["model_specific_params"])["pad"]) == 2000  # no torn row
    store = PresetStore(Database(path))  # and the worker's own code opens it and writes on
    store.create(quality("after-crash"))
    assert store.count() == len(rows) + 1
    store.db.close()


def test_sigkill_mid_import_keeps_it_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    store = PresetStore(Database(path))
    store.create(quality("kept"))
    store.db.close()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "3000"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "importing"
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    rows = _assert_consistent(path)
    assert len(rows) in (1, 3001), len(rows)
    assert "kept" in {r["model_id"] for r in rows}
