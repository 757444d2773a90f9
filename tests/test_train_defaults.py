"""Training without options: recipes, the held-out split of a plain class-folder tree, the
decoded-image cache, and a run that survives an absurd learning rate."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train import CLASSES, NCNN, make_subset

import squeezenet
from squeezenet.cli import main
from squeezenet.compress.distill import _dataset
from squeezenet.data import cache as cache_module
from squeezenet.data.cache import (
    CachedImages,
    CacheUnavailable,
    being_built,
    cached_pixels,
    index_path,
    list_caches,
    train_pixels,
)
from squeezenet.data.datasets import ImageDataset, split_folder, stratified_split
from squeezenet.data.transforms import get_preset, load_image
from squeezenet.engine import checks
from squeezenet.engine import train as train_module
from squeezenet.engine.augment import AugmentedDataset, TrainTransform
from squeezenet.engine.checks import loss_diverged
from squeezenet.engine.config import TrainConfig, prepare, resolve
from squeezenet.engine.distributed import setup_processes
from squeezenet.engine.recipes import SCRATCH, Recipe, finetune_recipe
from squeezenet.engine.run import Run
from squeezenet.engine.train import train
from squeezenet.engine.validate import validates
from squeezenet.errors import SqueezeNetError
from squeezenet.models import list_models
from squeezenet.weights.load import load_model

# one short epoch of small images, no worker processes
QUICK = [
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--image-size",
    "64",
    "--workers",
    "0",
    "--no-progress",
]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """One folder of 4 class folders (8 + 4 real Imagenette images each), no train/ or val/."""
    from conftest import shared_path

    split = make_subset(tmp_path_factory.mktemp("split"), shared_path, {"train": 8, "val": 4})
    root = tmp_path_factory.mktemp("plain") / "photos"
    for wnid in CLASSES:
        (root / wnid).mkdir(parents=True)
        for part in ("train", "val"):
            for f in (split / part / wnid).iterdir():
                shutil.copy(f, root / wnid / f.name)
    return root


def test_every_architecture_has_a_recipe():
    assert set(SCRATCH) == set(list_models())


def test_finetune_recipe_gives_small_folders_enough_steps():
    # (images) -> (batch, epochs): at least 8 steps an epoch, about 450 steps in all
    got = {n: (r.batch_size, r.epochs) for n in (100, 500, 9469) for r in [finetune_recipe(n)]}
    assert got == {100: (8, 38), 500: (32, 30), 9469: (64, 3)}
    # a new classifier learns from nothing: twice the steps (capped at 50 epochs)
    new = {n: finetune_recipe(n, new_head=True).epochs for n in (100, 500, 9469)}
    assert new == {100: 50, 500: 50, 9469: 6}
    assert finetune_recipe(500).lr == pytest.approx(0.001)  # 0.002 at batch 64


def test_rates_scale_linearly_for_sgd_and_by_the_square_root_for_adamw():
    sgd = Recipe(epochs=1, batch_size=128, lr=0.01, warmup=0.0)
    adamw = Recipe(epochs=1, batch_size=128, lr=0.002, warmup=0.0, optimizer="adamw")
    assert (sgd.lr_for(32), adamw.lr_for(32)) == pytest.approx((0.0025, 0.001))
    # above its own batch, AdamW keeps the measured rate: higher ones killed plain SqueezeNet
    assert (sgd.lr_for(512), adamw.lr_for(512)) == pytest.approx((0.04, 0.002))


@pytest.mark.parametrize(
    "optimizer, expected, setting, value",
    [
        (None, torch.optim.AdamW, "betas", (0.8, 0.999)),  # plain squeezenet1_1's recipe
        ("sgd", torch.optim.SGD, "momentum", 0.8),
        ("adamw", torch.optim.AdamW, "betas", (0.8, 0.999)),
    ],
)
def test_the_optimizer_is_the_recipes_or_the_flags(
    plain, tmp_path, optimizer, expected, setting, value
):
    """Momentum is SGD's momentum or AdamW's beta1; AdamW's weight decay is decoupled."""
    cfg = TrainConfig(
        str(plain),
        str(tmp_path / "run"),
        batch_size=8,
        optimizer=optimizer,
        lr=0.001,
        momentum=0.8,
        weight_decay=0.05,
    )
    opt = Run(prepare(cfg, setup_processes("cpu"), resume=False)).optimizer
    assert type(opt) is expected and opt.defaults["weight_decay"] == 0.05
    assert opt.defaults[setting] == value


def test_another_optimizer_than_the_recipes_needs_its_own_rate(plain, tmp_path):
    """Plain squeezenet1_1's recipe is AdamW at 0.002: SGD needs a rate of its own."""
    cfg = TrainConfig(str(plain), str(tmp_path / "run"), optimizer="sgd")
    # the recipe sized to the folder's few dozen training images: batch 8, 0.002 x sqrt(8 / 64)
    with pytest.raises(SqueezeNetError, match=r"rate 0.000707107 \(batch 8\) is for adamw; give"):
        Run(prepare(cfg, setup_processes("cpu"), resume=False))


def test_an_unknown_optimizer_is_a_one_line_error(plain, tmp_path):
    cfg = TrainConfig(str(plain), str(tmp_path / "run"), optimizer="lion")
    with pytest.raises(SqueezeNetError, match="--optimizer must be sgd or adamw, not 'lion'"):
        Run(prepare(cfg, setup_processes("cpu"), resume=False))


@pytest.mark.parametrize("reset_head, head_scale", [(False, 1.0), (True, 5.0)])
def test_only_a_new_classifier_gets_the_new_head_rate(plain, tmp_path, reset_head, head_scale):
    """Kept ImageNet rows are pretrained like the rest and move at lr; only a new classifier
    moves at x5, measured in a real first optimizer step against the pretrained layers' x0.05."""
    from conftest import shared_path

    weights = str(shared_path(NCNN))
    cfg = TrainConfig(str(plain), str(tmp_path / "run"), weights=weights, reset_head=reset_head)
    run = Run(prepare(dataclasses.replace(cfg, image_size=64), setup_processes("cpu"), False))
    head, rest = run.optimizer.param_groups
    assert [p.shape for p in head["params"]] == [(4, 512, 1, 1), (4,)]  # conv10 for 4 classes
    assert (head["lr_scale"], rest["lr_scale"]) == (head_scale, 0.05)
    run._set_lr()
    run._forward_backward(run.images.epoch(0, 0))
    before = {p: (p.detach().clone(), p.grad.clone()) for p in run.model.parameters()}
    run.optimizer.step()

    def rate(param: torch.nn.Parameter) -> float:
        """Change per unit of the first SGD step's direction (gradient plus weight decay)."""
        weight, grad = before[param]
        direction = grad + run.cfg.weight_decay * weight
        moved = direction.abs() > 1e-3 * direction.abs().max()
        return ((weight - param.detach())[moved] / direction[moved]).median().item()

    ratio = rate(head["params"][0]) / rate(rest["params"][0])
    assert ratio == pytest.approx(head_scale / 0.05, rel=1e-2)  # float32 rounding of tiny steps


class _Folder:
    """What ``resolve`` reads of a training set: its size, labels and class ids."""

    def __init__(self, classes: list[str], n: int) -> None:
        self.classes, self.labels = classes, [k % len(classes) for k in range(n)]

    def __len__(self) -> int:
        return len(self.labels)


@pytest.mark.parametrize(
    "classes, reset_head, epochs",
    [(CLASSES, False, 3), (CLASSES, True, 6), (["cat", "dog", "fox", "owl"], False, 6)],
)
def test_a_new_classifier_gets_twice_the_steps(classes, reset_head, epochs):
    """Imagenette-sized data: 3 epochs for kept ImageNet rows, 6 for a new classifier (asked
    for, or because the folders are not ImageNet classes)."""
    from conftest import shared_path

    cfg = TrainConfig("data", "run", weights=str(shared_path(NCNN)), reset_head=reset_head)
    got = resolve(cfg, _Folder(classes, 9469), load_model(shared_path(NCNN)))
    assert (got.batch_size, got.epochs) == (64, epochs)


def test_divergence_rule():
    assert loss_diverged(float("nan"), 2.3) and loss_diverged(float("inf"), 2.3)
    assert loss_diverged(23.5, 2.3) and not loss_diverged(22.5, 2.3)


def test_stratified_split_is_seeded_and_keeps_every_class_on_both_sides():
    labels = [0] * 10 + [1] * 5 + [2] * 2
    names = ["a", "b", "c"]
    train, val = stratified_split(labels, 0.2, 0, names)
    assert sorted(train + val) == list(range(17))
    assert [sum(labels[i] == k for i in val) for k in range(3)] == [2, 1, 1]
    assert stratified_split(labels, 0.2, 0, names) == (train, val)
    assert stratified_split(labels, 0.2, 1, names) != (train, val)
    with pytest.raises(SqueezeNetError, match="class 'c' has 1 image"):
        stratified_split(labels[:-1], 0.2, 0, names)
    with pytest.raises(SqueezeNetError, match="--val-split must lie between 0 and 1"):
        stratified_split(labels, 1.0, 0, names)


def test_plain_tree_is_split_written_into_the_run_and_reused(plain, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        str(plain),
        "--out",
        str(run),
        *QUICK,
    ]
    assert main(args) == 0
    first_line = capsys.readouterr().err.splitlines()[0]
    assert "val: 20% of each class held out (8 images" in first_line
    split = json.loads((run / "split.json").read_text())
    assert split == split_folder(plain, 0.2, 0)  # the same seed gives the same split
    assert len(split["train"]) == 40 and len(split["val"]) == 8
    assert {f.split("/")[0] for f, _ in split["val"]} == set(CLASSES)  # every class in val
    # evaluate pointed at the run measures its held-out share
    best = str(run / "best.safetensors")
    assert main(["evaluate", str(run), "--weights", best, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 8
    # compress --data RUN calibrates on the run's training share, never on its held-out images
    calibration, labelled = _dataset(run, load_model(best))
    assert labelled and {str(f.relative_to(plain)) for f in calibration.files} == {
        f for f, _ in split["train"]
    }
    # --resume reuses the saved split even if the folder gained images since
    shutil.copy(next((plain / CLASSES[0]).iterdir()), plain / CLASSES[0] / "extra.JPEG")
    try:
        assert main(["train", str(plain), "--out", str(run), "--resume", "--epochs", "2"]) == 2
        assert "--epochs 1 (asked 2)" in capsys.readouterr().err
        assert main(["train", str(plain), "--out", str(run), "--resume"]) == 0
    finally:
        (plain / CLASSES[0] / "extra.JPEG").unlink()
    assert json.loads((run / "split.json").read_text()) == split


def test_val_split_with_a_train_val_tree_is_an_error(shared, tmp_path, capsys):
    data = make_subset(tmp_path / "data", shared, {"train": 2, "val": 1})
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--val-split", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has train/ and val/ already" in err


def test_class_without_a_readable_image_is_named(plain, tmp_path, capsys):
    data = tmp_path / "photos"
    shutil.copytree(plain, data)
    for f in (data / CLASSES[1]).iterdir():
        f.write_bytes(b"not an image")
    args = [
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        *QUICK,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("training squeezenet1_1")  # then the error
    assert err[-1].endswith(
        f": {data / CLASSES[1]}: no readable image among its 10 training images"
    )


def test_cache_holds_the_decoded_pixels_and_is_reused(plain, tmp_path):
    files = sorted((plain / CLASSES[0]).iterdir())[:3]
    cache = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    for i, f in enumerate(files):
        want = train_pixels(40)(load_image(f, 40))
        np.testing.assert_array_equal(np.asarray(cache.image(i)), want)
    again = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    assert again.path == cache.path
    other = cached_pixels(files, 48, train_pixels(48), "train", progress=False)
    width, height = load_image(files[0], 48).size  # JPEG draft: at least 48 px
    assert other.path != cache.path and other.pixels(0).shape == (height, width, 3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    mixed = cached_pixels([files[0], broken], 40, train_pixels(40), "train", progress=False)
    assert mixed.bad == {1} and mixed.image(1) is None


def test_the_cache_changes_nothing_the_network_sees(plain):
    """The cache only saves decoding: every epoch's crops are the uncached ones, taken from the
    whole photo (the first cache held center squares at validation's resize side: its crops
    lost the sides and were enlarged)."""
    files = sorted((plain / CLASSES[0]).iterdir())[:4]
    base = ImageDataset(files, [0] * len(files), None)
    transform = TrainTransform(128, 0.35)
    cache = cached_pixels(files, 128, train_pixels(128), "train", progress=False)
    cached, decoded = (AugmentedDataset(base, transform, 0, c) for c in (cache, None))
    for key in [(epoch, i) for epoch in range(2) for i in range(len(files))]:
        (want, *rest), (got, *cached_rest) = decoded[key], cached[key]
        assert torch.equal(got, want) and cached_rest == rest
    for i, f in enumerate(files):
        width, height = load_image(f).size
        assert cache.pixels(i).shape == (height, width, 3)  # 224-px Imagenette: whole, as decoded


def test_a_disk_too_small_for_the_cache_is_said_and_leaves_nothing(plain, monkeypatch):
    """CacheUnavailable: training goes on without the cache (tests/test_full_disk.py)."""
    files = sorted(plain.rglob("*.JPEG"))  # 48: the space is checked after the first 32
    usage = SimpleNamespace(total=10**9, used=10**9, free=1000)
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _: usage)
    with pytest.raises(CacheUnavailable, match=r"cache needs about 0.\d MB more and the disk has"):
        cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    monkeypatch.undo()

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_decode_into", disk_full)
    with pytest.raises(CacheUnavailable, match="the disk filled up while the decoded-image cache"):
        cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    assert list(cache_module.cache_dir().glob(".*.tmp")) == []


def test_a_changed_file_gets_a_new_cache_that_replaces_the_old(plain, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(plain / CLASSES[0], folder)
    files = sorted(folder.iterdir())
    old = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    fewer = cached_pixels(files[:-1], 40, train_pixels(40), "train", progress=False)
    os.utime(files[0], ns=(0, files[0].stat().st_mtime_ns + 10**9))
    new = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    assert new.path != old.path and new.path.is_file()
    assert not old.path.exists() and not old.path.with_suffix(".json").exists()
    assert not index_path(old.path).exists() and index_path(new.path).is_file()
    assert fewer.path.is_file()  # another file list: still valid, kept


def test_a_cache_is_locked_while_it_is_built(plain, tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    decode, seen = cache_module._decode_into, []

    def decode_and_look(*args):
        seen.extend(being_built(tmp) for tmp in cache_module.cache_dir().glob(".*.tmp"))
        return decode(*args)

    monkeypatch.setattr(cache_module, "_decode_into", decode_and_look)
    files = sorted((plain / CLASSES[0]).iterdir())[:3]
    cache = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    assert seen == [True] and not being_built(cache.path)


def test_cache_command_lists_and_clears_by_last_use(plain, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    files = sorted((plain / CLASSES[0]).iterdir())[:3]
    old = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    new = cached_pixels(files[:2], 48, train_pixels(48), "train", progress=False)
    interrupted = old.path.with_name(".train-40px-3-0000-1.npy.tmp")
    interrupted.write_bytes(b"x" * 4096)
    building = old.path.with_name(".train-40px-3-0000-2.npy.tmp")
    building.write_bytes(b"x" * 4096)
    lock = building.open("rb")  # as a run building this cache holds it
    fcntl.flock(lock, fcntl.LOCK_EX)
    two_days_ago = time.time() - 2 * 86400
    for path in (old.path, old.path.with_suffix(".json")):
        os.utime(path, (two_days_ago, two_days_ago))
    os.utime(interrupted, (two_days_ago - 60, two_days_ago - 60))

    assert main(["cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(None, 4)[-1] for line in lines[:4]] == [
        "train-40px-3-0000-2  (being built)",
        new.path.stem,
        old.path.stem,
        "train-40px-3-0000-1  (interrupted)",
    ]  # the most recently used first
    assert lines[-1].split()[-4:] == ["in", "4", "caches:", str(tmp_path / "home" / "cache")]
    sizes = {entry.name: entry.size for entry in list_caches()}
    assert (
        sizes[old.path.stem]
        >= old.path.stat().st_size + old.path.with_suffix(".json").stat().st_size
    )

    # finding the old cache again marks it used now: clearing unused ones keeps it
    assert cached_pixels(files, 40, train_pixels(40), "train", progress=False).path == old.path
    assert main(["cache", "clear", "--unused-days", "1"]) == 0
    assert "deleted 1 caches" in capsys.readouterr().out
    assert not interrupted.exists() and old.path.is_file() and new.path.is_file()
    assert main(["cache", "clear"]) == 0
    assert "deleted 2 caches" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "home" / "cache").iterdir()] == [building.name]
    lock.close()  # the build ended without finishing: now it is an interrupted one
    assert main(["cache", "clear"]) == 0
    assert list((tmp_path / "home" / "cache").iterdir()) == []


def test_cache_clear_keeps_what_the_system_will_not_delete(plain, tmp_path, monkeypatch, capsys):
    """Windows refuses to delete a file another process has open, such as a cache a run reads."""
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    files = sorted((plain / CLASSES[0]).iterdir())[:2]
    in_use = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    unused = cached_pixels(files, 48, train_pixels(48), "train", progress=False)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == in_use.path:
            raise PermissionError(13, "The process cannot access the file", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert main(["cache", "clear"]) == 0
    assert "deleted 1 caches" in capsys.readouterr().out
    assert in_use.path.is_file() and not unused.path.exists()


def test_cache_list_skips_a_build_that_finishes_while_it_lists(plain, tmp_path, monkeypatch):
    """A build renames its .tmp to .npy at any moment: a listing that saw the .tmp goes on
    without it (it used to end in a FileNotFoundError traceback)."""
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    files = sorted((plain / CLASSES[0]).iterdir())[:2]
    done = cached_pixels(files, 40, train_pixels(40), "train", progress=False)
    building = done.path.with_name(".train-40px-2-0000-1.npy.tmp")
    building.write_bytes(b"x" * 4096)
    real_is_file = Path.is_file

    def is_file_then_finish(self):  # the build ends just after the listing has seen its .tmp
        found = real_is_file(self)
        if found and self == building:
            building.rename(building.with_name("train-40px-2-0000-1.npy"))
        return found

    monkeypatch.setattr(Path, "is_file", is_file_then_finish)
    assert [entry.name for entry in list_caches()] == [done.path.stem]


def test_cached_validation_images_are_what_validation_decodes(plain, tmp_path):
    """The cache holds the preset's center crops: normalised, they are the tensors the
    uncached validation feeds the network, and an unreadable image stays unreadable."""
    preset = get_preset("torchvision").with_size(64)
    files = sorted((plain / CLASSES[0]).iterdir())[:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    decoded = ImageDataset([*files, broken], [0, 0, 0, 0], preset, draft_size=preset.resize)
    cache = cached_pixels(decoded.files, preset.crop, preset.pixels, "val", draft=preset.resize)
    images = CachedImages(decoded, cache)
    for i in range(len(files)):
        pixels, label, index = images[i]
        torch.testing.assert_close(preset.normalize(pixels[None])[0], decoded[i][0])
        assert (label, index) == (0, i)
    assert images[3] is None and decoded[3] is None


def test_absurd_learning_rate_recovers_and_never_ruins_best(shared, tmp_path, capsys):
    data = make_subset(tmp_path / "data", shared, {"train": 8, "val": 4})
    run = tmp_path / "run"
    args = [
        "train",
        str(data),
        "--out",
        str(run),
        "--weights",
        str(shared(NCNN)),
        "--lr",
        "10",
        "--epochs",
        "2",
        "--image-size",
        "64",
        "--workers",
        "0",
        "--no-progress",
    ]
    code = main(args)
    err = capsys.readouterr().err
    assert "back to the start of epoch 1 with the rate x0.1 (retry 1 of 3)" in err
    assert "Traceback" not in err
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    best = str(run / "best.safetensors")
    assert main(["evaluate", str(data / "val"), "--weights", best, "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)["top1"]
    assert kept >= rows[0]["val_top1"]  # the file: never below the starting weights
    assert kept == pytest.approx(max(r["val_top1"] for r in rows))  # the best epoch's weights


def test_dead_outputs_are_retried_then_reported_in_one_line(shared, tmp_path, capsys):
    """Plain SqueezeNet's conv10 ReLU can die (every logit 0, no gradient): the run goes back
    to the epoch's start at a lower rate instead of training on at chance level."""
    data = make_subset(tmp_path / "data", shared, {"train": 8, "val": 4})
    torch.manual_seed(0)
    dead = squeezenet.create_model("squeezenet1_1", num_classes=len(CLASSES))
    torch.nn.init.constant_(dead.classifier[1].bias, -100.0)  # conv10 negative for every input
    squeezenet.save_model(dead, tmp_path / "dead.safetensors")
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--weights",
                 str(tmp_path / "dead.safetensors"), "--epochs", "30", "--batch-size", "8",
                 "--image-size", "64", "--workers", "0", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("the network's outputs died (the same logits for every image") == 4
    assert "(retry 3 of 3)" in err
    last = err.strip().splitlines()[-1]
    assert "after 3 retries at 10x lower rates: lower --lr" in last and "best.safetensors" in last


@pytest.mark.parametrize("check_every", [2, 3])  # step 8: a periodic check, the epoch's end
def test_a_network_fallen_back_to_chance_goes_back_to_its_epoch_start(
    shared, tmp_path, capsys, monkeypatch, check_every
):
    """After learning, a loss back at ln(classes) with chance accuracy (and logits that still
    differ between images, so not the dead-outputs case) is a divergence, not a run to go on."""
    monkeypatch.setattr(checks, "STUCK_CHECK_STEPS", check_every)
    data = make_subset(tmp_path / "data", shared, {"train": 8, "val": 4})
    cfg = TrainConfig(str(data), str(tmp_path / "run"), weights=str(shared(NCNN)), epochs=2,
                      batch_size=8, image_size=64, workers=0, progress=False)  # fmt: skip
    runs = []

    class Seen(Run):  # the run train() makes, for the callback to reach its model
        def __init__(self, setup) -> None:
            super().__init__(setup)
            runs.append(self)

    monkeypatch.setattr(train_module, "Run", Seen)
    noise = torch.Generator().manual_seed(0)

    def kill_in_epoch_2(step: int) -> None:  # 4 steps an epoch; until the run goes back
        conv10 = runs[0].model.classifier[1]
        if step >= 5 and runs[0].progress.retries == 0:
            with torch.no_grad():  # every class ~equally likely, but not identical logits
                conv10.weight.copy_(1e-7 * torch.randn(conv10.weight.shape, generator=noise))
                conv10.bias.fill_(1.0)

    result = train(cfg, on_step=kill_in_epoch_2)
    err = capsys.readouterr().err
    assert "the loss fell back to ln(4) = 1.386 with chance accuracy" in err
    assert "at step 8: back to the start of epoch 2 with the rate x0.1 (retry 1 of 3)" in err
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    epoch2 = result.history[2]  # trained again from its start, undamaged
    assert epoch2["train_top1"] >= 0.5 and epoch2["val_top1"] > 0.5


def test_long_runs_validate_about_ten_times_and_always_at_the_end():
    def validated(epochs: int) -> list[int]:
        return [e for e in range(1, epochs + 1) if validates(e, epochs)]

    assert validated(3) == [1, 2, 3]
    assert validated(38) == [4, 8, 12, 16, 20, 24, 28, 32, 36, 38]


def test_compare_takes_a_plain_class_folder_tree(plain, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        str(plain),
        "--archs",
        "squeezenet1_1",
        "--out",
        str(out),
        *QUICK,
    ]
    assert main(args) == 0
    [row] = json.loads((out / "compare.json").read_text())
    assert row["arch"] == "squeezenet1_1" and row["recipe"]["lr"] == pytest.approx(
        0.002 * (8 / 64) ** 0.5
    )
    split = json.loads((out / "squeezenet1_1" / "split.json").read_text())
    assert len(split["val"]) == 8 and round(row["top1"] * 8) == row["top1"] * 8
    # the same command again keeps the finished run, and decodes nothing to do so
    shutil.rmtree(Path(os.environ["SQUEEZENET_HOME"]) / "cache")
    assert main(args) == 0
    [again] = json.loads((out / "compare.json").read_text())
    assert (again["top1"], again["train_min"]) == (row["top1"], row["train_min"])
    assert not (Path(os.environ["SQUEEZENET_HOME"]) / "cache").exists()


def test_a_folder_smaller_than_the_recipes_batch_trains_from_scratch_the_same_twice(
    tmp_path, capsys
):
    """3 classes x 20 images (48 to train on) with no recipe option: the batch of 64 becomes
    8 (8 steps an epoch at most), the rate 0.002 x sqrt(8 / 64) (AdamW's rule), said in the
    run's first line; two runs with one seed end with the same weights, bit for bit."""
    from conftest import coloured_shapes

    from squeezenet.weights.formats import safetensors

    data = coloured_shapes(tmp_path / "data", per_class=20)
    weights = []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = ["train", data, "--arch", "squeezenet1_1", "--epochs", "1", "--out", out,
                "--image-size", "64", "--seed", "5", "--workers", "0", "--no-progress"]  # fmt: skip
        assert main([str(a) for a in argv]) == 0
        first = capsys.readouterr().err.splitlines()[0]
        assert "48 images of 3 classes (6 steps/epoch x 1 epochs): global batch 8 = " in first
        assert "adamw lr 0.000707107, " in first, first
        assert "; the recipe's batch 64 sized to 48 images, lr 0.002 scaled by the square-root " \
            "rule; " in first, first  # fmt: skip
        weights.append(safetensors.read(out / "last.safetensors")[0])
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 6  # 48 images, batch 8
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        np.testing.assert_array_equal(weights[0][k], weights[1][k], err_msg=k)


def test_resume_options_left_out_stay_open_for_the_saved_run(tmp_path):
    """The CLI reads no state.pt: every run field not given stays None (the engine's
    ``prepare`` reads the saved run once and fills them), even those with plain defaults."""
    from squeezenet.cli import build_parser
    from squeezenet.cli.train import config_from_args
    from squeezenet.engine.config import PLAIN_DEFAULTS, RUN_FIELDS

    argv = ["train", str(tmp_path), "--out", str(tmp_path / "no"), "--resume"]
    cfg = config_from_args(build_parser().parse_args(argv))  # no state.pt there: none read
    assert all(getattr(cfg, k) is None for k in RUN_FIELDS), cfg
    assert set(PLAIN_DEFAULTS) <= set(RUN_FIELDS)
    given = ["train", str(tmp_path), "--out", str(tmp_path / "no"), "--seed", "0", "--no-cache"]
    cfg = config_from_args(build_parser().parse_args([*given, "--resume"]))
    assert (cfg.seed, cfg.cache, cfg.reset_head) == (0, False, None)
