"""``hf:OWNER/NAME[@REVISION]``: a model repository on the Hugging Face hub, downloaded for ``revjax import``.

Files come through ``huggingface_hub.snapshot_download`` into ``<base dir>/hub`` (the hub's own cache layout:
interrupted downloads resume, a second import reads the cache), only those an import can use (weights, metadata,
tokenizer files, no optimizer states). Each file is then checked against the hash its cache entry is named by
(sha256 for large files, git's blob hash for small ones). Without the network, or with ``HF_HUB_OFFLINE=1``, a
repository that is not in the cache fails at once with one sentence.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from revjax.errors import RevjaxError

PREFIX = "hf:"
SPEC = re.compile(r"hf:(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")
WANTED = ["*.json", "*.pt", "*.pkl", "*.safetensors", "tokenizer/*", "README.md"]
UNWANTED = ["optim_*", "*/optim_*", "*optimizer*"]
_CHUNK = 1 << 24


class HubError(RevjaxError, ValueError):
    """A hub repository that cannot be imported, described in one sentence."""


def is_hub_spec(src: object) -> bool:
    return isinstance(src, str) and src.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``(OWNER/NAME, REVISION or None)`` of ``hf:OWNER/NAME[@REVISION]``."""
    match = SPEC.fullmatch(spec)
    if not match:
        raise HubError(f"{spec!r} is not a hub model; write hf:OWNER/NAME or hf:OWNER/NAME@REVISION")
    return match["repo"], match["revision"]


def repo_name(spec: str) -> str:
    """NAME of ``hf:OWNER/NAME[@REVISION]``."""
    return parse_spec(spec)[0].split("/", 1)[1]


def download(spec: str, cache_dir: Path) -> Path:
    """The snapshot folder of ``spec`` in ``cache_dir``, downloaded (or completed) when the hub can be reached."""
    import huggingface_hub
    from huggingface_hub import errors

    repo, revision = parse_spec(spec)
    where = f"{repo}@{revision}" if revision else repo
    try:
        folder = huggingface_hub.snapshot_download(repo, revision=revision, cache_dir=str(cache_dir),
                                                   allow_patterns=WANTED, ignore_patterns=UNWANTED)
    except errors.RevisionNotFoundError:
        raise HubError(f"the hub repository {repo} has no revision {revision!r}; check the name after '@'") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError):
        raise HubError(f"the hub has no model {repo} that this machine may read; check the name, or log in with "
                       "`hf auth login` for a private or gated repository") from None
    except errors.IncompleteSnapshotError:
        raise HubError(f"the copy of {where} in {cache_dir} is incomplete and the hub cannot be reached to finish it; "
                       "run again with the network, or pass a local folder holding the model") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as err:
        raise HubError(f"{where} could not be downloaded from the Hugging Face hub (no network or HF_HUB_OFFLINE is "
                       f"set: {type(err).__name__}) and is not in {cache_dir}; download it where the hub can be "
                       "reached and pass the local folder to revjax import instead") from None
    folder = Path(folder)
    verify(folder)
    return folder


def _hash_of(path: Path, kind: str, size: int) -> str:
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(snapshot: Path) -> None:
    """Check every file of a cached snapshot against the hash its blob is named by; one sentence per damage.

    Blobs already checked, unchanged since (same size and modification time), are not read again: the record is
    ``.revjax-verified.json`` beside the repository's ``blobs/``."""
    record_path = snapshot.parent.parent / ".revjax-verified.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    for link in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        blob = link.resolve()
        name, stat = blob.name, blob.stat()
        kind = "sha256" if re.fullmatch(r"[0-9a-f]{64}", name) else "sha1" if re.fullmatch(r"[0-9a-f]{40}", name) else ""
        if not kind or record.get(name) == [stat.st_size, stat.st_mtime_ns]:
            continue
        if _hash_of(blob, kind, stat.st_size) != name:
            raise HubError(f"the downloaded {link.relative_to(snapshot)} does not match its {kind} checksum (damaged "
                           f"or changed on disk); delete {blob} and run the import again to download it afresh")
        record[name] = [stat.st_size, stat.st_mtime_ns]
    try:
        record_path.write_text(json.dumps(record), encoding="utf-8")
    except OSError:
        pass  # a read-only cache: the next import checks again
