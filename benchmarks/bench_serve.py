"""Load test of ``squeezenet serve`` on loopback: requests/s and latency, batched vs batch 1.

Starts one server per ``--max-batch`` value (each a ``python -m squeezenet serve`` process on
127.0.0.1), then for each number of concurrent clients runs a lean asyncio HTTP/1.1 load
generator (one keep-alive connection per client) against each server in turn, so the modes
are measured side by side under the same machine load. Every run is bounded by ``--seconds``
(one value, or one per client level) and ``--max-requests`` and stops by itself; SIGTERM (e.g.
from ``timeout``) stops the servers too.

    .venv/bin/python benchmarks/bench_serve.py [--weights W] [--clients 1,8,64] [--seconds 30]
    python3 benchmarks/bench_serve.py --backend cuda --clients 1,8,64 --seconds 5,5,30
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np

SHARED = Path(os.environ.get("SQUEEZENET_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@contextmanager
def server(weights: str, max_batch: int, max_wait_ms: float, backend: str, threads: int | None):
    """A ``squeezenet serve`` process starting on a free loopback port; yields (URL, process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "squeezenet", "serve", "--weights", weights,
        "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
        "--backend", backend, "--timeout", "60", "--log-level", "warning",
        *(["--threads", str(threads)] if threads else []),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(30)


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    """Return once the server answers /healthz; exit if it dies or takes over ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {' '.join(process.args)}")
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client_loop(
    url: str, request: bytes, stop: float, count: int, latencies: list[float]
) -> int:
    """One keep-alive connection posting ``request`` until ``stop`` or ``count`` requests.

    A lean HTTP/1.1 client on asyncio streams, so that the load generator costs far less CPU
    than the server it measures (both share the machine). Returns the number of failures.
    """
    host, port = url.removeprefix("http://").split(":")
    failed, connection = 0, None
    while time.perf_counter() < stop and count > 0:
        count -= 1
        start = time.perf_counter()
        try:
            connection = connection or await asyncio.open_connection(host, int(port))
            reader, writer = connection
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length[1]) if length else 0)
            ok = head.startswith(b"HTTP/1.1 200 ")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            ok, connection = False, None
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            failed += 1
    if connection:
        connection[1].close()
    return failed


async def load(
    url: str, pid: int, image: bytes, clients: int, seconds: float, max_requests: int
) -> dict:
    """``clients`` connections posting ``image`` until time or the request budget runs out."""
    request = (
        b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {len(image)}\r\n\r\n".encode()
        + image
    )
    warm_up: list[float] = []  # connections, decoder threads, the batch sizes of this load
    await asyncio.gather(*[client_loop(url, request, math.inf, 2, warm_up) for _ in range(clients)])
    latencies: list[float] = []
    before, cpu, client_cpu = batch_stats(url), cpu_seconds(pid), time.process_time()
    start = time.perf_counter()
    failures = await asyncio.gather(
        *[client_loop(url, request, start + seconds, max_requests // clients, latencies)
          for _ in range(clients)]
    )  # fmt: skip
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    client_cpu = time.process_time() - client_cpu
    after = batch_stats(url)
    ms = np.asarray(latencies) * 1e3
    batches = after[1] - before[1]
    return {
        "requests": len(latencies),
        "failed": sum(failures),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "mean_batch": (after[0] - before[0]) / batches if batches else float("nan"),
        "cpu_ms": cpu * 1e3 / max(len(latencies), 1),
        "client_cpu_ms": client_cpu * 1e3 / max(len(latencies), 1),
    }


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    text = httpx.get(f"{url}/metrics").text
    found = dict(re.findall(r"^squeezenet_batch_size_(sum|count) (\S+)$", text, re.M))
    return float(found["sum"]), float(found["count"])


def network_ms_per_image(args: argparse.Namespace, batches: list[int]) -> dict[int, float]:
    """The network alone through the same backend: median ms per image at each batch size.

    With ``cuda`` each call ends with the logits copied back to the CPU, so it times the GPU's
    work (and the copies) to the end.
    """
    import torch

    import squeezenet
    from squeezenet.inference.backends import optimize

    if args.threads:
        torch.set_num_threads(args.threads)
    model = squeezenet.load_model(args.weights)
    forward = optimize(model, args.backend)
    crop = model.weights_info.preprocess.crop
    result = {}
    for b in batches:
        x = torch.randn(b, 3, crop, crop)
        forward(x)
        times = []
        for _ in range(max(3, 64 // b)):
            start = time.perf_counter()
            forward(x)
            times.append(time.perf_counter() - start)
        result[b] = float(np.median(times)) * 1e3 / b
    return result


def device(backend: str) -> str:
    """The machine the network runs on, in words."""
    cpu = f"{os.cpu_count()} CPU cores"
    if backend != "cuda":
        return cpu
    import torch

    return f"{torch.cuda.get_device_name()} and {cpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--weights", default=str(SHARED / "weights/ncnn/squeezenet_v1.1.ncnn.param")
    )
    parser.add_argument("--image", default=str(SHARED / "data/photos/cat.jpg"))
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels")
    parser.add_argument("--batches", default="1,32", help="--max-batch of each server")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, help="the servers' --threads")
    parser.add_argument(
        "--seconds", default="30", help="per run, at most: one value or one per --clients level"
    )
    parser.add_argument("--max-requests", type=int, default=20_000, help="per run, at most")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # servers stop too
    image = Path(args.image).read_bytes()
    clients = [int(c) for c in args.clients.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    seconds = [float(s) for s in args.seconds.split(",")]
    seconds = seconds * len(clients) if len(seconds) == 1 else seconds
    if len(seconds) != len(clients):
        parser.error("--seconds takes one value or one per --clients level")
    print(f"device: {device(args.backend)}; load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"{Path(args.weights).name}, {Path(args.image).name} ({len(image):,} B), backend "
        f"{args.backend}, threads {args.threads or 'default'}, max-wait {args.max_wait_ms:g} ms"
    )
    network = network_ms_per_image(args, batches)
    print(
        "network alone: " + ", ".join(f"batch {b} {ms:.2f} ms/image" for b, ms in network.items())
    )
    results: dict[tuple[int, int], dict] = {}
    with ExitStack() as stack:
        servers = {  # all start at once
            b: stack.enter_context(
                server(args.weights, b, args.max_wait_ms, args.backend, args.threads)
            )
            for b in batches
        }
        for url, process in servers.values():
            wait_until_up(url, process)
        for n, duration in zip(clients, seconds, strict=True):
            for b in batches:
                url, process = servers[b]
                r = asyncio.run(load(url, process.pid, image, n, duration, args.max_requests))
                results[n, b] = r
                print(f"  clients {n:3d}  max-batch {b:3d}: {r['rps']:7.1f} req/s, "
                      f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, failed {r['failed']}, "
                      f"mean batch {r['mean_batch']:.1f}, CPU ms/req: server {r['cpu_ms']:.1f}, "
                      f"client {r['client_cpu_ms']:.1f}")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print("| clients | max-batch | requests | failed | req/s | p50 ms | p99 ms | mean batch "
          "| server CPU ms/req |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (n, b), r in results.items():
        print(f"| {n} | {b} | {r['requests']} | {r['failed']} | {r['rps']:.1f} | {r['p50']:.1f} "
              f"| {r['p99']:.1f} | {r['mean_batch']:.1f} | {r['cpu_ms']:.1f} |")  # fmt: skip
    base = batches[0]
    for n in clients:
        ratios = ", ".join(
            f"max-batch {b}: {results[n, b]['rps'] / results[n, base]['rps']:.2f}x"
            for b in batches[1:]
        )
        print(f"\n{n} clients, req/s against max-batch {base}: {ratios}", end="")
    print()


if __name__ == "__main__":
    main()
