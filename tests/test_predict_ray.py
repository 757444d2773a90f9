"""The Ray Data path on a local 2-CPU instance: the same top-k as the single process and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import squeezenet
from squeezenet.inference.stream import predict_stream

ray = pytest.importorskip("ray", reason="the Ray path needs: pip install 'squeezenet[ray]'")
pytest.importorskip("ray.data", reason="the Ray path needs: pip install 'squeezenet[ray]'")

from squeezenet.inference.ray_predict import predict_dataset  # noqa: E402

NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def images(shared, tmp_path):
    """Nine imagenet-val images and a truncated JPEG."""
    files = sorted(shared("data/imagenet-val/images").iterdir())[:9]
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(shared("data/photos/cat.jpg").read_bytes()[:3000])
    return [str(f) for f in files] + [str(bad)]


def same_top(rows: list[dict], expected: list[dict]) -> None:
    assert [r["file"] for r in rows] == [e["file"] for e in expected]
    for row, ref in zip(rows, expected, strict=True):
        assert [(t["index"], t["label"]) for t in row["top"]] == [
            (t["index"], t["label"]) for t in ref["top"]
        ]
        assert [t["prob"] for t in row["top"]] == pytest.approx(
            [t["prob"] for t in ref["top"]], rel=1e-4
        )


def test_paths_and_bytes_give_the_single_process_top_k(shared, images, local_ray):
    model = squeezenet.load_model(shared(NCNN))
    batches = list(predict_stream(model, images, topk=3, workers=0))
    expected = [r for b in batches for r in b.results]
    assert [f for b in batches for f, _ in b.failures] == [images[-1]]

    paths = ray.data.from_items([{"path": f} for f in images], override_num_blocks=3)
    encoded = ray.data.read_binary_files(images, include_paths=True)
    for dataset in (paths, encoded):
        rows = predict_dataset(dataset, str(shared(NCNN)), topk=3, batch_size=4, actors=1)
        rows = sorted(rows.take_all(), key=lambda r: images.index(r["file"]))
        same_top([r for r in rows if r["error"] is None], expected)
        assert [r["error"] for r in rows][-1].startswith(f"{images[-1]}: cannot decode image")
        assert rows[-1]["top"] == []


def test_cli_on_a_ray_address_matches_the_cli(shared, images, local_ray, tmp_path):
    listing = "\n".join(images)
    args = ["predict", "--files-from", "-", "--weights", shared(NCNN), "--json", "--topk", "3"]

    def cli(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "squeezenet", *map(str, args), *extra]
        return subprocess.run(command, input=listing, capture_output=True, text=True, timeout=300)

    local, on_ray = cli("--workers", "0"), cli("--ray", local_ray)
    assert local.returncode == on_ray.returncode == 1, on_ray.stderr
    rows = [json.loads(line) for line in on_ray.stdout.splitlines()]
    same_top(rows, [json.loads(line) for line in local.stdout.splitlines()])
    assert f"skipped {images[-1]}: cannot decode image" in on_ray.stderr
