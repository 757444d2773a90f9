"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests wait in a queue; a single loop takes the first one, then keeps collecting until it has
``max_batch`` or ``max_wait_ms`` has passed, and runs the batch in one inference thread while
the event loop goes on accepting and decoding the next requests. It waits only while more
requests are on their way (inside ``batcher.expecting()``, e.g. being read and decoded): a
lone request runs at once instead of paying ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import Future
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BatchResult:
    """One request's logits row and how it was served."""

    logits: np.ndarray
    batch_size: int
    queue_ms: float  # from submission to the start of its batch's forward pass
    inference_ms: float  # the batch's forward pass
    queued: float  # time.perf_counter() when it joined the queue


class MicroBatcher:
    """``await batcher(x)`` returns the logits row of one input, computed in a shared batch.

    ``forward`` takes the inputs stacked (the server's: uint8 HWC pixels, normalised there).
    """

    def __init__(
        self,
        forward: Forward,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.forward, self.max_batch, self.max_wait = forward, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch  # called with (batch size, seconds of inference)
        self._task: asyncio.Task | None = None
        self._expected = 0  # requests on their way to the queue

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the batching loop in the running event loop (again after ``stop``, if need be)."""
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future, float]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="squeezenet-inference")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()[1].cancel()
        self._executor.shutdown(wait=True)

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Count a request as on its way (while it is read and decoded), so batches wait for it."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1

    async def __call__(self, x: torch.Tensor) -> BatchResult:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((x, future, time.perf_counter()))  # unbounded: never waits
        return await future

    def submit(self, executor: Executor, prepare: Callable[..., torch.Tensor], *args) -> Future:
        """Run ``prepare(*args)`` in ``executor`` and queue its result straight from there.

        The returned future gets the ``BatchResult`` (or ``prepare``'s exception); the request
        counts as on its way meanwhile. One future and one wake-up of the event loop per request,
        where ``await batcher(await loop.run_in_executor(...))`` takes two of each.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._expected += 1

        def arrive(x: torch.Tensor | None, error: Exception | None) -> None:  # in the loop
            self._expected -= 1
            if future.done():  # cancelled meanwhile (timeout)
                return
            if error is not None:
                future.set_exception(error)
            else:
                self._queue.put_nowait((x, future, time.perf_counter()))

        def work() -> None:  # in the executor
            try:
                x, error = prepare(*args), None
            except Exception as e:
                x, error = None, e
            loop.call_soon_threadsafe(arrive, x, error)

        executor.submit(work)
        return future

    async def _collect(self) -> list[tuple[torch.Tensor, asyncio.Future, float]]:
        """The first waiting request, plus those that arrive before the batch is full or due."""
        items = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(items) < self.max_batch:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not self._expected:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in items if not item[1].done()]  # drop requests that timed out

    def _run(self, images: list[torch.Tensor]) -> tuple[np.ndarray, float, float]:
        """Stack and classify, in the inference thread (stacking can take milliseconds)."""
        start = time.perf_counter()
        logits = np.asarray(self.forward(torch.stack(images)), dtype=np.float32)
        return logits, start, time.perf_counter() - start

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            try:
                images = [x for x, _, _ in items]
                logits, start, seconds = await loop.run_in_executor(
                    self._executor, self._run, images
                )
            except Exception as e:  # a failed batch fails its requests, not the loop
                for _, future, _ in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            if self.on_batch:
                self.on_batch(len(items), seconds)
            for row, (_, future, submitted) in zip(logits, items, strict=True):
                if not future.done():
                    future.set_result(
                        BatchResult(
                            row, len(items), (start - submitted) * 1e3, seconds * 1e3, submitted
                        )
                    )
