"""The server's counters and histograms, their Prometheus text (format 0.0.4), and the
middleware that counts every answer."""

from __future__ import annotations

import bisect
import time
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are exposed."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            total += count
            out.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        return [*out, f"{self.name}_sum {self.sum:.6f}", f"{self.name}_count {total}"]


class Metrics:
    """Requests and errors by route and status, classify latency, batch sizes and times."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency = Histogram(
            "squeezenet_classify_seconds", "Time to answer POST /v1/classify.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "squeezenet_batch_size", "Images per forward pass.", BATCH_BUCKETS
        )
        self.inference = Histogram(
            "squeezenet_inference_seconds", "Time of one batched forward pass.", LATENCY_BUCKETS
        )

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> str:
        lines = []
        for name, help, keep in (
            ("squeezenet_requests_total", "HTTP requests by route and status.", 0),
            ("squeezenet_errors_total", "HTTP requests answered with status >= 400.", 400),
        ):
            lines += [f"# HELP {name} {help}", f"# TYPE {name} counter"]
            lines += [
                f'{name}{{route="{route}",status="{status}"}} {count}'
                for (route, status), count in sorted(self.requests.items())
                if status >= keep
            ]
        for histogram in (self.latency, self.batch_size, self.inference):
            lines += histogram.lines()
        return "\n".join(lines) + "\n"


class RequestMetrics:
    """ASGI middleware counting every HTTP answer by route and status, timing classify."""

    def __init__(self, app, metrics: Metrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests[route, status] += 1
            if route == "/v1/classify":
                self.metrics.latency.observe(time.perf_counter() - start)
