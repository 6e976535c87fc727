"""revjax import hf:OWNER/NAME[@REVISION] on hub-cache folders the tests make (HF_HUB_OFFLINE: nothing is fetched).

The cache is laid out as huggingface_hub keeps it: ``models--OWNER--NAME/blobs/<hash>`` (sha256 for weights, git's
blob sha1 for small files), ``snapshots/<commit>/<file>`` linking to the blobs, ``refs/<revision>`` naming the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import jax
import numpy as np
import pytest

from revjax.interop.export import InteropError, export_checkpoint
from revjax.interop.hf import export_hf
from revjax.interop.hub import HubError, parse_spec
from revjax.interop.importer import import_checkpoint
from revjax.runs import load_run
from tests.helpers import make_run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny backward run and its two release forms: onanchat's flat files and a transformers folder."""
    root = tmp_path_factory.mktemp("hub")
    make_run(root / "run", "backward", "sequence")
    flat = export_checkpoint(root / "run", root / "flat", layout="flat", all_fp32=True).parent
    hf = export_hf(root / "run", root / "hf")
    return load_run(root / "run"), flat, hf


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("REVJAX_BASE_DIR", str(tmp_path / "base"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "base"


def put_in_cache(base: Path, repo: str, files: dict[str, Path | bytes], revision: str = "main") -> Path:
    """Lay ``files`` (name → source file or bytes) out as huggingface_hub's cache of ``repo`` at ``revision``."""
    storage = base / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    for name, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        large = name.endswith((".pt", ".safetensors"))
        blob = (hashlib.sha256(data) if large else hashlib.sha1(b"blob %d\0" % len(data) + data)).hexdigest()
        (storage / "blobs").mkdir(parents=True, exist_ok=True)
        (storage / "blobs" / blob).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(storage / "blobs" / blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(COMMIT)
    return snapshot


def folder_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if not p.name.startswith(".")}


def assert_same_weights(imported: Path, run) -> None:
    back = load_run(imported)
    for got, want in zip(jax.tree.leaves(back.arrays), jax.tree.leaves(run.arrays)):
        np.testing.assert_array_equal(got, want)


def test_spec_parsing():
    assert parse_spec("hf:raghavt/nanochat-760M-backward") == ("raghavt/nanochat-760M-backward", None)
    assert parse_spec("hf:karpathy/nanochat-d32@v1.0") == ("karpathy/nanochat-d32", "v1.0")
    for bad in ("hf:nanochat", "hf:/x", "hf:a/b@", "hf:a/b c"):
        with pytest.raises(HubError, match="OWNER/NAME"):
            parse_spec(bad)


def test_flat_release_imports_into_the_default_folder_with_its_direction(released, base):
    run, flat, _ = released
    put_in_cache(base, "someone/tiny-release", folder_files(flat))
    out = import_checkpoint("hf:someone/tiny-release")
    assert out == (base / "checkpoints" / "tiny-release").resolve()
    assert load_run(out).meta["direction"] == "backward"
    assert_same_weights(out, run)


def test_transformers_folder_at_a_revision(released, base):
    run, _, hf = released
    put_in_cache(base, "someone/tiny-hf", folder_files(hf), revision="v2")
    out = import_checkpoint("hf:someone/tiny-hf@v2", base / "mine")
    back = load_run(out)
    assert (back.meta["direction"], back.step) == ("backward", run.step)
    assert back.tokenizer.identity() == run.tokenizer.identity()
    assert_same_weights(out, run)


def test_step_layout_with_the_tokenizer_beside_the_weights(released, base):
    run, flat, _ = released
    meta = json.loads((flat / "meta.json").read_text())
    files = {"model_000003.pt": flat / "model.pt", "meta_000003.json": json.dumps(meta).encode(),
             "tokenizer.pkl": flat / "tokenizer.pkl", "token_bytes.pt": flat / "token_bytes.pt"}
    put_in_cache(base, "someone/tiny-steps", files)
    out = import_checkpoint("hf:someone/tiny-steps")
    assert load_run(out).step == 3
    assert_same_weights(out, run)


def test_a_name_saying_backward_without_metadata_is_asked_not_guessed(released, base):
    run, flat, _ = released
    meta = json.loads((flat / "meta.json").read_text())
    del meta["direction"]
    put_in_cache(base, "someone/tiny-backward", {**folder_files(flat), "meta.json": json.dumps(meta).encode()})
    with pytest.raises(InteropError, match="its name says 'backward'; pass --direction backward"):
        import_checkpoint("hf:someone/tiny-backward")
    questions = []
    out = import_checkpoint("hf:someone/tiny-backward", ask=lambda q: questions.append(q) or "backward")
    assert "forward, backward or bidirectional" in questions[0]
    assert load_run(out).meta["direction"] == "backward"
    out = import_checkpoint("hf:someone/tiny-backward", base / "told", direction="forward")
    assert load_run(out).meta["direction"] == "forward"


def test_metadata_wins_over_a_contradicting_direction(released, base):
    _, flat, _ = released
    put_in_cache(base, "someone/tiny", folder_files(flat))
    with pytest.raises(InteropError, match="says the model is backward, not forward"):
        import_checkpoint("hf:someone/tiny", direction="forward")


def test_unknown_layout_is_refused_in_one_sentence(base):
    put_in_cache(base, "someone/other", {"config.json": b'{"model_type": "llama"}', "README.md": b"# other\n"})
    with pytest.raises(InteropError, match=r"none of the layouts revjax imports .*it has README.md, config.json"):
        import_checkpoint("hf:someone/other")
    assert not (base / "checkpoints" / "other").exists()


def test_a_damaged_download_is_caught(released, base):
    _, flat, _ = released
    snapshot = put_in_cache(base, "someone/damaged", folder_files(flat))
    blob = (snapshot / "model.pt").resolve()
    data = bytearray(blob.read_bytes())
    data[-100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(HubError, match="model.pt does not match its sha256 checksum.*delete"):
        import_checkpoint("hf:someone/damaged")


def test_offline_without_a_cached_copy_fails_at_once(base, tmp_path):
    with pytest.raises(HubError, match="nobody/nothing could not be downloaded .* pass the local folder"):
        import_checkpoint("hf:nobody/nothing")
    env = {**os.environ, "REVJAX_BASE_DIR": str(tmp_path / "cli"), "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "revjax.interop.importer", "hf:nobody/nothing@v1"], env=env,
                          capture_output=True, text=True, timeout=120)
    print(f"offline refusal took {time.monotonic() - started:.1f} s")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nobody/nothing@v1 could not be downloaded" in lines[0], done.stderr
    assert not (tmp_path / "cli" / "checkpoints").exists()
    shutil.rmtree(tmp_path / "cli", ignore_errors=True)


def test_a_second_import_reads_no_unchanged_blob_again(released, base, monkeypatch):
    from revjax.interop import hub

    _, flat, _ = released
    snapshot = put_in_cache(base, "someone/twice", folder_files(flat))
    import_checkpoint("hf:someone/twice", base / "first")
    hashed = []
    original = hub._hash_of
    monkeypatch.setattr(hub, "_hash_of", lambda path, *a: hashed.append(path.name) or original(path, *a))
    import_checkpoint("hf:someone/twice", base / "second")
    assert hashed == []
    blob = (snapshot / "model.pt").resolve()
    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 1))  # changed on disk: checked again
    import_checkpoint("hf:someone/twice", base / "third")
    assert hashed == [blob.name]
