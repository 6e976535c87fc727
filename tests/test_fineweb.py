"""Tests for revjax.data.fineweb against a local HTTP server (127.0.0.1, ephemeral port; no network)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from revjax.data import fineweb
from revjax.data.fineweb import ShardDownloadError, download_shards, shard_url
from revjax.data.shards import iter_documents, write_shard, write_shards


class ShardServer:
    """Serves ``files`` by name; can fail the next N requests, cut a response short, or ignore Range."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_next = 0
        self.cut_next: int | None = None
        self.support_range = True
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                with server.lock:
                    server.requests.append((name, rng))
                    fail = server.fail_next > 0
                    server.fail_next -= fail
                    cut, server.cut_next = server.cut_next, None
                if fail:
                    self.send_error(503, "try later")
                    return
                if name not in server.files:
                    self.send_error(404, "no such shard")
                    return
                data = server.files[name]
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng and server.support_range else 0
                if start >= len(data) and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:] if cut is None else data[start : start + cut]
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ShardServer]:
    srv = ShardServer()
    docs = [f"document {i} " + "educational text " * (i % 50) for i in range(3000)]
    for path in write_shards(docs, tmp_path / "origin", docs_per_shard=1000, row_group_size=100):
        srv.files[path.name] = path.read_bytes()
    yield srv
    srv.close()


def _download(server: ShardServer, indices, out: Path, **kw) -> list[Path]:
    return download_shards(indices, out, base_url=server.url, backoff=0, progress=False, **kw)


def test_download_and_skip_existing(server: ShardServer, tmp_path: Path) -> None:
    out = tmp_path / "fw"
    paths = _download(server, [0, 1, 2], out, workers=3)
    assert paths == [out / f"shard_{i:05d}.parquet" for i in range(3)]
    assert [p.read_bytes() for p in paths] == [server.files[p.name] for p in paths]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]
    assert len(list(iter_documents(out, "train"))) == 2000
    n = len(server.requests)
    assert _download(server, [2, 0], out) == [paths[2], paths[0]]
    assert len(server.requests) == n


def test_resume_truncated_part(server: ShardServer, tmp_path: Path) -> None:
    data = server.files["shard_00001.parquet"]
    (tmp_path / "shard_00001.parquet.part").write_bytes(data[:1000])
    [path] = _download(server, [1], tmp_path)
    assert path.read_bytes() == data
    assert server.requests == [("shard_00001.parquet", "bytes=1000-")]
    assert not (tmp_path / "shard_00001.parquet.part").exists()


def test_complete_part_is_finished_without_body(server: ShardServer, tmp_path: Path) -> None:
    data = server.files["shard_00000.parquet"]
    (tmp_path / "shard_00000.parquet.part").write_bytes(data)
    assert _download(server, [0], tmp_path)[0].read_bytes() == data
    assert server.requests == [("shard_00000.parquet", f"bytes={len(data)}-")]


def test_restart_when_server_ignores_range(server: ShardServer, tmp_path: Path) -> None:
    server.support_range = False
    (tmp_path / "shard_00000.parquet.part").write_bytes(b"stale bytes from another file")
    [path] = _download(server, [0], tmp_path)
    assert path.read_bytes() == server.files["shard_00000.parquet"]


def test_cut_response_is_resumed(server: ShardServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fineweb, "CHUNK_BYTES", 1000)
    server.cut_next = 5500
    [path] = _download(server, [2], tmp_path, retries=2)
    assert path.read_bytes() == server.files["shard_00002.parquet"]
    assert [r for _, r in server.requests] == [None, "bytes=5000-"]


def test_retry_after_failures(server: ShardServer, tmp_path: Path) -> None:
    server.fail_next = 2
    [path] = _download(server, [0], tmp_path, retries=2)
    assert path.read_bytes() == server.files["shard_00000.parquet"]
    assert len(server.requests) == 3


def test_gives_up_with_clear_error(server: ShardServer, tmp_path: Path) -> None:
    server.fail_next = 100
    with pytest.raises(ShardDownloadError, match=r"shard_00000.parquet from http://127.0.0.1:\d+/data/shard_00000"
                                                 r".* after 3 attempt\(s\) \(last: HTTP 503"):
        _download(server, [0], tmp_path / "fw", retries=2)
    assert list((tmp_path / "fw").iterdir()) == []


def test_missing_shard_is_not_retried(server: ShardServer, tmp_path: Path) -> None:
    with pytest.raises(ShardDownloadError, match=r"shard_00007.parquet from .*HTTP 404"):
        _download(server, [7], tmp_path)
    assert len(server.requests) == 1


@pytest.mark.parametrize("content", [b"<html>not parquet</html>", "numbers", "empty"])
def test_corrupt_content_is_rejected(server: ShardServer, tmp_path: Path, content) -> None:
    if content == "numbers":
        pq.write_table(pa.table({"id": list(range(10))}), tmp_path / "numbers.parquet")
        content = (tmp_path / "numbers.parquet").read_bytes()
    if content == "empty":
        content = write_shard(tmp_path / "empty.parquet", []).read_bytes()
    server.files["shard_00003.parquet"] = content
    out = tmp_path / "fw"
    with pytest.raises(ShardDownloadError, match=r"shard_00003.parquet from http://.*not a parquet file with a 'text' "
                                                 r"column and at least one row\); check the network"):
        _download(server, [0, 3], out, retries=1)
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.parquet"]
    assert len(server.requests) == 3


@pytest.mark.parametrize("damage", ["garbage", "empty"])
def test_corrupt_existing_shard_is_replaced(server: ShardServer, tmp_path: Path, damage: str) -> None:
    if damage == "empty":
        write_shard(tmp_path / "shard_00001.parquet", [])
    else:
        (tmp_path / "shard_00001.parquet").write_bytes(b"truncated garbage")
    [path] = _download(server, [1], tmp_path)
    assert path.read_bytes() == server.files["shard_00001.parquet"]


def test_bad_indices_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ([-1], [1823], [0, 2.5]):
        with pytest.raises(ValueError, match=r"0\.\.1822"):
            download_shards(bad, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert shard_url(3) == f"{fineweb.DEFAULT_BASE_URL}/shard_00003.parquet"
    monkeypatch.setenv("REVJAX_FINEWEB_URL", "http://mirror.local/fw/")
    assert shard_url(1822) == "http://mirror.local/fw/shard_01822.parquet"


def test_env_base_url_is_used(server: ShardServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVJAX_FINEWEB_URL", server.url)
    [path] = download_shards([0], tmp_path, backoff=0, progress=False)
    assert path.read_bytes() == server.files["shard_00000.parquet"]
