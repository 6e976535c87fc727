"""Resumable, verified download of FineWeb-Edu parquet shards (``karpathy/fineweb-edu-100b-shuffle``).

Each shard is fetched to ``shard_XXXXX.parquet.part`` (resumed with an HTTP ``Range`` request when the server allows
it), checked against the server's Content-Length and opened as parquet with a ``text`` column, and only then renamed
into place, so a shard file that exists is always complete.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path

import requests
from tqdm import tqdm

from revjax.config import FINEWEB_SHARDS
from revjax.data.corpus import corpus_dir, default_data_dir
from revjax.data.shards import TEXT_COLUMN, ShardError, open_shard, shard_name
from revjax.errors import RevjaxError

DEFAULT_BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
BASE_URL_ENV = "REVJAX_FINEWEB_URL"
MAX_SHARD_INDEX = FINEWEB_SHARDS - 1
CHUNK_BYTES = 1 << 20


class ShardDownloadError(RevjaxError, RuntimeError):
    """A shard could not be downloaded intact."""


class _Retry(Exception):
    """A failed attempt worth retrying (the message says why)."""


def resolve_base_url() -> str:
    """The shard base URL: ``$REVJAX_FINEWEB_URL`` if set, else ``DEFAULT_BASE_URL``."""
    return os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def shard_url(index: int, base: str | None = None) -> str:
    """URL of shard ``index`` under ``base`` (default: ``resolve_base_url()``)."""
    return f"{(base or resolve_base_url()).rstrip('/')}/{shard_name(index)}"


def is_valid_shard(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a parquet file with a ``text`` column and at least one row (footer metadata only)."""
    try:
        open_shard(path)
    except ShardError:
        return False
    return True


def download_shards(
    indices: Sequence[int],
    out_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    workers: int = 4,
    retries: int = 5,
    timeout: float = 60,
    backoff: float = 1.0,
    progress: bool = True,
) -> list[Path]:
    """Download shards ``indices`` (0..1822) into ``out_dir`` and return their paths in the order given.

    Valid shards already there are skipped. ``base_url`` defaults to ``$REVJAX_FINEWEB_URL`` or the Hugging Face
    dataset. Each shard gets ``retries`` retries, retry ``k`` (from 0) after ``backoff * 2**k`` seconds; a
    ``.part`` file left by an interrupted run is resumed.
    """
    bad = [i for i in indices if not (isinstance(i, Integral) and 0 <= i <= MAX_SHARD_INDEX)]
    if bad:
        raise ValueError(f"shard indices must be integers in 0..{MAX_SHARD_INDEX}, got {bad[:5]}")
    if workers < 1 or retries < 0:
        raise ValueError(f"need workers >= 1 and retries >= 0, got {workers} and {retries}")
    unique = list(dict.fromkeys(int(i) for i in indices))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base_url or resolve_base_url()

    shard_bar = tqdm(total=len(unique), desc="fineweb shards", unit="shard", disable=not progress, position=0)
    byte_bar = tqdm(total=0, desc="fineweb bytes", unit="B", unit_scale=True, disable=not progress, position=1)
    lock = threading.Lock()

    def run(index: int) -> Path:
        path = _download_one(index, out_dir, base, retries, timeout, backoff, byte_bar, lock)
        with lock:
            shard_bar.update(1)
        return path

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, i) for i in unique]
    errors = [e for f in futures if (e := f.exception()) is not None]
    shard_bar.close()
    byte_bar.close()
    if errors:
        if not isinstance(errors[0], ShardDownloadError):
            raise errors[0]
        more = f" ({len(errors) - 1} more shard(s) failed too)" if len(errors) > 1 else ""
        raise ShardDownloadError(f"{errors[0]}{more}") from errors[0]
    return [out_dir / shard_name(int(i)) for i in indices]


def _download_one(
    index: int,
    out_dir: Path,
    base: str,
    retries: int,
    timeout: float,
    backoff: float,
    byte_bar: tqdm,
    lock: threading.Lock,
) -> Path:
    final = out_dir / shard_name(index)
    if final.exists():
        if is_valid_shard(final):
            return final
        final.unlink()
    part = final.with_name(final.name + ".part")
    url = shard_url(index, base)
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch(url, part, timeout, byte_bar, lock)
        except _Retry as e:
            reason = str(e)
            continue
        except requests.RequestException as e:
            reason = f"{type(e).__name__}: {e}"
            continue
        if is_valid_shard(part):
            os.replace(part, final)
            return final
        part.unlink()
        reason = f"the downloaded file is not a parquet file with a {TEXT_COLUMN!r} column and at least one row"
    raise ShardDownloadError(
        f"could not download {final.name} from {url} after {retries + 1} attempt(s) (last: {reason}); "
        "check the network and the URL, then run again to resume"
    )


def _fetch(url: str, part: Path, timeout: float, byte_bar: tqdm, lock: threading.Lock) -> None:
    """Bring ``part`` up to the full size of ``url``, resuming it if the server answers a Range request with 206."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416 and offset:
            total = _range_total(r.headers.get("Content-Range"))
            if total == offset:
                return
            part.unlink()
            raise _Retry(f"the server rejected resuming at byte {offset}, restarting")
        if r.status_code >= 400:
            reason = f"HTTP {r.status_code} {r.reason}"
            if r.status_code in (408, 429) or r.status_code >= 500:
                raise _Retry(reason)
            raise ShardDownloadError(
                f"could not download {part.name.removesuffix('.part')} from {url} ({reason}); check the index and URL"
            )
        if r.status_code == 206 and offset:
            start = _range_start(r.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retry(f"the server resumed at byte {start} instead of {offset}, restarting")
            total = _range_total(r.headers.get("Content-Range"))
            mode = "ab"
        else:
            offset, mode = 0, "wb"
            length = r.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
        if total is not None:
            with lock:
                byte_bar.total += total - offset
                byte_bar.refresh()
        written = offset
        with open(part, mode) as f:
            for chunk in r.iter_content(CHUNK_BYTES):
                f.write(chunk)
                written += len(chunk)
                with lock:
                    byte_bar.update(len(chunk))
    if total is not None and written != total:
        raise _Retry(f"got {written} of {total} bytes")


def _range_start(content_range: str | None) -> int | None:
    """First byte of ``bytes START-END/TOTAL``; None if absent or malformed."""
    try:
        return int(content_range.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _range_total(content_range: str | None) -> int | None:
    """TOTAL of ``bytes START-END/TOTAL`` or ``bytes */TOTAL``; None if unknown or malformed."""
    try:
        return int(content_range.rsplit("/", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m revjax.data.fineweb -n 8`` downloads shards 0..7 (the val shard is the last one)."""
    parser = argparse.ArgumentParser(prog="python -m revjax.data.fineweb", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--num-shards", type=int, default=FINEWEB_SHARDS, help="first N shards")
    parser.add_argument("-w", "--workers", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args(argv)
    if not 1 <= args.num_shards <= FINEWEB_SHARDS:
        parser.error(f"-n must be in 1..{FINEWEB_SHARDS}")
    out = corpus_dir(args.data_dir, "fineweb")
    download_shards(range(args.num_shards), out, workers=args.workers)
    print(out)


if __name__ == "__main__":
    main()
