"""Saved images as other programs find them: metadata A1111's readers read, absolute paths, modes
that follow the umask, names that never overwrite another job's file, no NUL in a PNG text chunk.

One worker for the module, started as a host in another folder might start it: a relative
``--output-dir`` and a umask of 027 (files should come out rw-r-----).
"""

from __future__ import annotations

import base64
import io
import re
import stat
import struct
import sys
from pathlib import Path

import piexif
import piexif.helper
import pytest
from hypothesis import given, strategies as st
from PIL import Image
from sd_parsers import ParserManager

from conftest import Worker
from sdworker.errors import WorkerError
from sdworker.managers.output import OutputWriter, exif_user_comment, file_stem

BASE = {"model_id": "tiny-sd15", "width": 64, "height": 64, "steps": 1, "guidance_scale": 5.0, "scheduler": "Euler"}
PROMPT = "a red fox, snow: (dusk:1.2)"
NEGATIVE = "blurry, lowres"
UMASK = 0o027


@pytest.fixture(scope="module")
def host_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("host")


@pytest.fixture(scope="module")
def w(models_dir: Path, host_dir: Path):
    # sh sets the umask, then execs the worker: "$0" is this Python, "$@" the worker's flags
    cmd = ["/bin/sh", "-c", f'umask {UMASK:03o}; exec "$0" -m sdworker "$@"', sys.executable]
    worker = Worker(["--models-dir", str(models_dir), "--output-dir", "out", "--device", "cpu"], cmd=cmd, cwd=host_dir)
    yield worker
    worker.kill()


def _gen(w: Worker, **data) -> dict:
    r = w.call("inference.text2img", {**BASE, "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 3, **data}, timeout=300)
    assert r["success"], r
    return r["data"]


# ---- metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_every_format_carries_the_infotext_where_a1111_readers_look(w: Worker, fmt: str):
    d = _gen(w, output={"format": fmt}, session_id=f"meta-{fmt}")
    im = d["images"][0]
    text = im["infotext"]
    path = Path(im["path"])
    assert path.read_bytes() == base64.b64decode(im["base64"])
    image = Image.open(path)
    if fmt == "png":
        assert image.info["parameters"] == text
    else:
        # piexif, as A1111's PNG Info reads it: UserComment in the Exif sub-IFD, UNICODE-prefixed
        exif = piexif.load(image.info["exif"])
        assert piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment]) == text
        assert piexif.ImageIFD.ImageDescription not in exif["0th"] and 0x9286 not in exif["0th"]
    info = ParserManager().parse(image)
    assert info is not None, f"sd-parsers found nothing in the {fmt} file"
    sampler = info.samplers[0]
    assert sampler.name == "Euler"
    assert [p.value for p in sampler.prompts] == [PROMPT]
    assert [p.value for p in sampler.negative_prompts] == [NEGATIVE]
    assert sampler.parameters["seed"] == "3" and sampler.parameters["steps"] == "1"


def test_exif_comment_matches_what_piexif_writes_for_a1111():
    text = "prompt, with: ünïcode\nNegative prompt: x\nSteps: 1"
    ours = piexif.load(exif_user_comment(text))
    a1111 = piexif.load(piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(text, encoding="unicode")}}))
    assert ours["Exif"][piexif.ExifIFD.UserComment] == a1111["Exif"][piexif.ExifIFD.UserComment]


def _png_text_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(chunk type, body) of every tEXt / iTXt / zTXt chunk, read from the bytes (no decoder in between)."""
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            out.append((kind, body))
        pos += 12 + length
    return out


def test_a_nul_in_the_prompt_never_reaches_a_png_text_chunk(w: Worker):
    prompt = "a lighthouse\x00 at dusk"
    d = _gen(w, prompt=prompt, session_id="nul")
    im = d["images"][0]
    assert d["parameters"]["prompt"] == prompt  # the request's own text is kept as sent
    assert "\x00" not in im["infotext"] and im["infotext"].startswith("a lighthouse at dusk\n")
    chunks = _png_text_chunks(Path(im["path"]).read_bytes())
    [(kind, body)] = [c for c in chunks if c[1].startswith(b"parameters\x00")]
    assert kind == b"tEXt"
    text = body[len(b"parameters\x00") :]
    assert b"\x00" not in text  # PNG: a tEXt keyword is followed by one NUL, the text holds none
    assert text.decode("latin-1") == im["infotext"]
    for fmt in ("jpeg", "webp"):
        d = _gen(w, prompt=prompt, output={"format": fmt}, session_id=f"nul-{fmt}")
        exif = piexif.load(Image.open(io.BytesIO(base64.b64decode(d["images"][0]["base64"]))).info["exif"])
        assert piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment]) == d["images"][0]["infotext"]


# ---- paths and modes ----------------------------------------------------------------------------


def test_paths_are_absolute_and_files_follow_the_umask(w: Worker, host_dir: Path):
    d = _gen(w, session_id="modes", num_images=2)
    for im in d["images"]:
        path = Path(im["path"])
        assert path.is_absolute() and path.parent == host_dir / "out", path
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK  # rw-r-----, never the temp file's 0600
    assert not [p for p in (host_dir / "out").iterdir() if p.name.endswith(".part")]


# ---- names --------------------------------------------------------------------------------------

COLLIDING = ["coll a", "coll/a", "a b", "a:b", "x" * 80 + "1", "x" * 80 + "2", "..", "!!", "/"]


def test_session_ids_that_sanitize_alike_never_share_a_file(w: Worker):
    done: dict[str, tuple[Path, bytes]] = {}
    for seed, sid in enumerate(COLLIDING):
        im = _gen(w, session_id=sid, seed=100 + seed)["images"][0]
        done[sid] = (Path(im["path"]), base64.b64decode(im["base64"]))
    paths = [p for p, _ in done.values()]
    assert len(set(paths)) == len(paths), paths
    for sid, (path, data) in done.items():
        assert path.read_bytes() == data, f"{sid!r}: its file was overwritten by a later job"
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,80}-0\.png", path.name), path.name
    assert done["coll a"][0].name.startswith("coll_a-") and done["coll/a"][0].name.startswith("coll_a-")


def test_a_reused_session_id_never_overwrites_the_earlier_file(w: Worker):
    first = _gen(w, session_id="again", seed=1)["images"][0]
    second = _gen(w, session_id="again", seed=2)["images"][0]
    assert Path(first["path"]).name == "again-0.png" and Path(second["path"]).name == "again-0.1.png"
    assert Path(first["path"]).read_bytes() == base64.b64decode(first["base64"])
    assert Path(second["path"]).read_bytes() == base64.b64decode(second["base64"])


def test_unique_write_takes_the_next_free_name(tmp_path: Path):
    [target] = OutputWriter(tmp_path).plan(None, "s", 1, "png")
    target.write_bytes(b"earlier job")
    (tmp_path / "s-0.1.png").write_bytes(b"another")
    got = OutputWriter.write_atomic(target, b"ours", unique=True)
    assert got == tmp_path / "s-0.2.png" and got.read_bytes() == b"ours"
    assert target.read_bytes() == b"earlier job"
    (tmp_path / "d-0.png").mkdir()  # a folder in the way is a fault to report, not a name to step around
    with pytest.raises(WorkerError, match="cannot write"):
        OutputWriter.write_atomic(tmp_path / "d-0.png", b"x", unique=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d-0.png", "s-0.1.png", "s-0.2.png", "s-0.png"]


@given(st.text(min_size=1, max_size=200))
def test_stems_are_safe_short_and_keep_safe_ids(session_id: str):
    stem = file_stem(session_id)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,80}", stem) and not stem.startswith(".")
    safe = re.fullmatch(r"[A-Za-z0-9._-]{1,80}", session_id) and not session_id.startswith((".", "_")) and not session_id.endswith((".", "_"))
    assert (stem == session_id) == bool(safe)


def test_colliding_ids_get_distinct_stems():
    stems = [file_stem(s) for s in COLLIDING]
    assert len(set(stems)) == len(stems), stems


def test_chunk_reader_sees_pillows_text_chunks():
    """The test's own PNG chunk reader, checked on a file Pillow wrote (so the NUL test reads truly)."""
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "abc")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=meta)
    assert _png_text_chunks(buf.getvalue()) == [(b"tEXt", b"parameters\x00abc")]
