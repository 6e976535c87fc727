"""A bounded request queue and one worker thread that runs compatible requests together through the engine.

The worker takes the oldest waiting request, waits ``batch_window_s`` for companions, and adds up to
``max_batch − 1`` more that share its sampling settings and stop token (a request with its own ``seed`` always runs
alone, so that the seed reproduces its reply). The batch is padded to a power of two with copies of a prompt, so the
engine compiles a handful of batch shapes; every request keeps its own ``max_tokens`` and tool order.

Each request gets its tokens through a thread-safe callback, chunk by chunk. A request whose client went away is
``cancel``\\ ed: its row is dropped at the next chunk, and the engine stops as soon as no row of the batch is
still wanted. A full queue refuses new requests (:class:`QueueFull`).
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from revjax.chat.protocol import Completion
from revjax.chat.session import ChatModel


class QueueFull(Exception):
    pass


class Closed(Exception):
    pass


@dataclass(eq=False)
class Job:
    """One queued request; ``emit(kind, value)`` receives ``("tokens", ids)``, then ``("done", finish_reason)`` or
    ``("error", message)``, called from the worker thread."""

    request: Completion
    emit: Callable[[str, object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    finished: bool = False

    def key(self) -> tuple:
        r = self.request
        seed = ("own", id(self)) if r.seed is not None else None
        return r.temperature, r.top_k, r.top_p, r.task, seed  # the task decides the stop token

    def cancel(self) -> None:
        self.cancelled.set()


class Batcher:
    """Owns the engine of ``model``: ``submit`` queues a job; a worker thread runs batches until ``close``."""

    def __init__(self, model: ChatModel, *, max_queue: int = 32, max_batch: int = 8, batch_window_s: float = 0.01):
        self.model, self.max_queue, self.max_batch, self.window = model, max_queue, max_batch, batch_window_s
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.active = 0
        self.running: list[Job] = []
        self.stats = {"batches": 0, "requests": 0, "cancelled": 0, "tokens": 0, "largest_batch": 0, "stopped_early": 0}
        self._thread = threading.Thread(target=self._work, name="revjax-chat-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            waiting, self._queue = list(self._queue), collections.deque()
            self._cond.notify_all()
        for job in waiting:
            job.emit("error", "the server is shutting down")
        for job in self.running:
            job.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting; try again shortly")
            self._queue.append(job)
            self._cond.notify_all()

    def warm_up(self) -> None:
        """Compile the batch-of-one programs before the first request (prefill and a decode chunk)."""
        model = self.model
        for way in model.ways:
            prompt = model.prompt([model.encode("Hello")] if model.task(way) != "reverse" else [[]], way)
            for _ in model.engine.stream([prompt], 1, max_len=model.max_len, stop_ids=[model.stop_id(way)]):
                pass

    def cancel(self, job: Job) -> None:
        """Stop ``job``: taken out of the queue if it waits there, its row dropped if it runs (no-op if done)."""
        if job.finished or job.cancelled.is_set():
            return
        job.cancel()
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                job.finished = True
                self.stats["cancelled"] += 1

    # ---- the worker -------------------------------------------------------------------------------------------

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            first = self._queue.popleft()  # cancelled jobs leave the queue at once (cancel)
            if self.window > 0 and self.max_batch > 1 and len(self._queue) < self.max_batch - 1:
                self._cond.wait(self.window)
            batch, keep = [first], collections.deque()
            while self._queue:
                job = self._queue.popleft()
                if len(batch) < self.max_batch and job.key() == first.key():
                    batch.append(job)
                else:
                    keep.append(job)
            self._queue = keep
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self.running = batch
            self.active = len(batch)
            try:
                self._generate(batch)
            except Exception as err:  # a failed batch fails its requests, not the server
                for job in batch:
                    if not job.finished:
                        job.finished = True
                        job.emit("error", f"generation failed ({type(err).__name__}: {err})")
            finally:
                self.running, self.active = [], 0

    def _generate(self, batch: list[Job]) -> None:
        model, first = self.model, batch[0].request
        size = 1 << (len(batch) - 1).bit_length()
        prompts = [job.request.prompt for job in batch]
        prompts += [prompts[0]] * (size - len(batch))
        orders = [model.tool_order[job.request.way] for job in batch]
        orders += [orders[0]] * (size - len(batch))
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        stream = model.engine.stream(
            prompts, max(job.request.max_tokens for job in batch), temperature=first.temperature,
            top_k=first.top_k, top_p=first.top_p, seed=secrets.randbits(31) if first.seed is None else first.seed,
            stop_ids=[model.stop_id(first.way)], max_len=model.max_len, tool_order=orders)
        try:
            for chunk in stream:
                for i, job in enumerate(batch):
                    if job.finished:
                        continue
                    if job.cancelled.is_set():
                        job.finished = True
                        self.stats["cancelled"] += 1
                        job.emit("done", "cancelled")
                        continue
                    new = chunk.tokens[i][: job.request.max_tokens - job.generated]
                    job.generated += len(new)
                    self.stats["tokens"] += len(new)
                    if new:
                        job.emit("tokens", new)
                    if job.generated >= job.request.max_tokens or chunk.done[i]:
                        job.finished = True
                        job.emit("done", "length" if job.generated >= job.request.max_tokens else "stop")
                if all(job.finished for job in batch):
                    if not all(chunk.done[: len(batch)]):
                        self.stats["stopped_early"] += 1
                    break
        finally:
            stream.close()


def wait_idle(batcher: Batcher, timeout: float = 10.0) -> bool:
    """Whether the batcher has nothing queued or running within ``timeout`` seconds (for tests and shutdown)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not batcher.queued and not batcher.active:
            return True
        time.sleep(0.01)
    return False
