"""Predict on a Ray cluster with Ray Data (``pip install 'squeezenet[ray]'``).

Two steps stream into each other: ``decode_batch`` turns images into uint8 pixels and
``Predictor`` actors, each holding one loaded model behind ``--backend``, normalise and classify
them (Ray Data fuses the two into the actors)::

    import ray
    from squeezenet.inference.ray_predict import predict_dataset

    images = ray.data.read_binary_files("/data/photos", include_paths=True)  # or a "path" column
    predictions = predict_dataset(images, "squeezenet1_1.torchvision", backend="onnxruntime")
    predictions.write_json("/data/predictions")  # rows {"file", "top", "error"}

The weights (a file path or a name from ``squeezenet download``) and, for a ``path`` column, the
images must be readable at the same path on every node (a shared file system or a copy each).
Ray is imported only here and only when used.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..data.transforms import Preprocess, load_image
from ..errors import SqueezeNetError
from ..weights.load import load_model
from .backends import open_file, optimize
from .pipeline import top_classes
from .stream import Batch

INSTALL = "pip install 'squeezenet[ray]'"


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Core alone lacks it)
    except ImportError:
        raise SqueezeNetError(f"the Ray path needs Ray Data; install it with {INSTALL}") from None
    return ray


def _schema():
    import pyarrow as pa

    top = pa.struct([("index", pa.int64()), ("label", pa.string()), ("prob", pa.float64())])
    return pa.schema([("file", pa.string()), ("top", pa.list_(top)), ("error", pa.string())])


def _load(weights: str, backend: str, preprocess: str | None, file_format: str | None):
    """The model as ``predict`` opens it: an .onnx file as it is, anything else loaded."""
    return open_file(weights, backend, preprocess) or load_model(
        weights, file_format=file_format, preprocess=preprocess
    )


def decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess) -> dict[str, np.ndarray]:
    """Rows with ``bytes`` (encoded images) or ``path`` -> uint8 pixels, file names, errors.

    An image that cannot be decoded keeps its row, with black pixels and the decoder's reason
    in ``error`` (empty for the others), so the predictor can report it.
    """
    paths = batch.get("path")
    sources = batch["bytes"] if "bytes" in batch else paths
    if sources is None:
        raise SqueezeNetError("a Ray dataset of images needs a 'path' or a 'bytes' column")
    names = (
        [str(p) for p in paths]
        if paths is not None
        else [f"row {i}" for i, _ in enumerate(sources)]
    )
    blank = np.zeros((preprocess.crop, preprocess.crop, 3), np.uint8)
    pixels, errors = [], []
    for name, source in zip(names, sources, strict=True):
        data = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        try:
            pixels.append(preprocess.pixels(load_image(data, preprocess.resize)).numpy())
            errors.append("")
        except SqueezeNetError as e:  # the message names the file, not the in-memory copy
            pixels.append(blank)
            errors.append(str(e).replace(str(data), name))
    return {"file": np.array(names), "pixels": np.stack(pixels), "error": np.array(errors)}


class Predictor:
    """A Ray Data callable class: one model per actor, batches of pixels -> top-k rows."""

    def __init__(
        self,
        weights: str,
        backend: str = "auto",
        topk: int = 5,
        preprocess: str | None = None,
        file_format: str | None = None,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)  # the CPUs Ray reserved for this actor
        self.model = _load(weights, backend, preprocess, file_format)
        self.forward = optimize(self.model, backend)
        self.info = self.model.weights_info
        self.topk = topk

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        good = np.flatnonzero(batch["error"] == "")
        top: list[list[dict]] = [[] for _ in batch["file"]]
        if good.size:
            x = self.info.preprocess.normalize(torch.from_numpy(batch["pixels"][good]))
            with torch.inference_mode():
                logits = self.forward(x).float().numpy()
            for i, row in zip(good, logits, strict=True):
                top[i] = top_classes(row, self.info, self.topk)
        rows = {
            "file": [str(f) for f in batch["file"]],
            "top": top,
            "error": [str(e) or None for e in batch["error"]],
        }
        return pa.Table.from_pydict(rows, schema=_schema())


def predict_dataset(
    dataset,
    weights: str,
    *,
    backend: str = "auto",
    topk: int = 5,
    batch_size: int = 32,
    actors: int | tuple[int, int] | None = None,
    cpus_per_actor: int = 1,
    preprocess: str | None = None,
    file_format: str | None = None,
):
    """Map a Ray dataset of images (a ``path`` or a ``bytes`` column) to top-k predictions.

    Returns a lazy Ray dataset with rows ``{"file", "top": [{"index", "label", "prob"}],
    "error"}``: ``error`` is None, or the reason the image could not be decoded (``top`` is
    then empty). ``actors``: a fixed number of model actors or a (min, max) range; default an
    autoscaling pool. Each actor runs ``backend`` on ``cpus_per_actor`` threads.
    """
    ray = require_ray()
    model = _load(weights, backend, preprocess, file_format)  # fails here, once, if unreadable
    if isinstance(actors, int):
        pool = ray.data.ActorPoolStrategy(size=actors)
    else:
        low, high = actors or (1, None)
        pool = ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    pixels = dataset.map_batches(
        decode_batch, batch_size=batch_size, fn_kwargs={"preprocess": model.weights_info.preprocess}
    )
    return pixels.map_batches(
        Predictor,
        batch_size=batch_size,
        compute=pool,
        num_cpus=cpus_per_actor,
        fn_constructor_kwargs={
            "weights": str(weights), "backend": backend, "topk": topk,
            "preprocess": preprocess, "file_format": file_format, "threads": cpus_per_actor,
        },
        udf_modifying_row_count=False,
    )  # fmt: skip


def predict_ray(
    files: Sequence[str],
    weights: str,
    *,
    address: str | None = None,
    backend: str = "auto",
    topk: int = 5,
    batch_size: int = 32,
    preprocess: str | None = None,
    file_format: str | None = None,
) -> Iterator[Batch]:
    """``predict_stream`` on Ray: the same batches, in input order, from a cluster's actors.

    ``address``: a running cluster (``ray start --head`` prints it); None: the cluster started on
    this machine, else a new local instance for this run.
    """
    ray = require_ray()
    if not files:
        return
    ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results in input order, like predict
        context.enable_progress_bars = False  # predict draws its own
        blocks = max(1, min(len(files) // batch_size, 1000))
        dataset = ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks)
        predictions = predict_dataset(
            dataset, weights, backend=backend, topk=topk, batch_size=batch_size,
            preprocess=preprocess, file_format=file_format,
        )  # fmt: skip
        for table in predictions.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            rows = table.to_pylist()
            results = [{"file": r["file"], "top": r["top"]} for r in rows if r["error"] is None]
            yield Batch(
                results,
                np.zeros((len(results), 0), np.float32),  # --ray does not bring logits back
                [(r["file"], r["error"]) for r in rows if r["error"] is not None],
                [r["file"] for r in rows],
            )
    finally:
        ray.shutdown()
