"""Training on a tiny real Imagenette subset: loss falls, files, labels into predict/evaluate,
exact resume after SIGKILL, clear errors for bad data and mismatched resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from squeezenet.cli import main
from squeezenet.data.transforms import get_preset
from squeezenet.engine.augment import TrainTransform, random_resized_crop_box
from squeezenet.engine.checkpoint import STATE_FILE
from squeezenet.engine.checks import loss_is_stuck
from squeezenet.engine.config import prepare
from squeezenet.engine.distributed import setup_processes
from squeezenet.engine.loading import WORKER_NICENESS, _init_worker
from squeezenet.engine.network import lr_factor, make_model
from squeezenet.engine.train import TrainConfig, train
from squeezenet.weights.formats import safetensors
from squeezenet.weights.load import load_model

CLASSES = ["n01440764", "n02102040", "n03394916", "n03888257"]  # tench, springer, horn, parachute
NAMES = {"tench", "English springer", "French horn", "parachute"}
NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"


def make_subset(root: Path, shared, per_class: dict[str, int], classes=CLASSES) -> Path:
    """Copy the first few real Imagenette images of each class into root/{train,val}/<wnid>/."""
    for split, n in per_class.items():
        for wnid in classes:
            src = sorted((shared("data/imagenette") / split / wnid).iterdir())[:n]
            (root / split / wnid).mkdir(parents=True)
            for f in src:
                shutil.copy(f, root / split / wnid / f.name)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from conftest import shared_path

    return make_subset(tmp_path_factory.mktemp("tiny"), shared_path, {"train": 8, "val": 4})


@pytest.fixture(scope="module")
def finetuned(tiny, tmp_path_factory):
    """Fine-tune the real v1.1 ImageNet weights, with a new classifier, on 4 classes x 8 images."""
    from conftest import shared_path

    out = tmp_path_factory.mktemp("run") / "ft"
    # the recipe pinned: these tests check the run's mechanics, not the defaults
    cfg = TrainConfig(
        str(tiny), str(out), weights=str(shared_path(NCNN)), reset_head=True, epochs=4,
        batch_size=8, image_size=96, lr=0.002, backbone_lr=0.1, new_head_lr=1.0,
        label_smoothing=0.1, workers=0, progress=False,
    )  # fmt: skip
    return train(cfg)


def test_random_resized_crop_box_is_inside_and_seeded():
    boxes = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        left, top, right, bottom = random_resized_crop_box(300, 200, rng, scale=(0.08, 1.0))
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        boxes.append((left, top, right, bottom))
    assert len(set(boxes)) > 150  # varied
    again = random_resized_crop_box(300, 200, np.random.default_rng(7))
    assert again == boxes[7]  # same seed, same crop


def test_train_transform_full_crop_is_the_image_resized_or_its_mirror(shared):
    image = Image.open(sorted((shared("data/imagenette/val") / CLASSES[0]).iterdir())[0])
    image = image.convert("RGB").resize((300, 300))
    whole = TrainTransform(112, min_scale=1.0)  # the whole (square) image, resized
    reference = torch.from_numpy(np.array(image.resize((112, 112), Image.Resampling.BILINEAR)))
    flips = set()
    for seed in range(8):
        x = whole(image, np.random.default_rng(seed))
        assert x.shape == (112, 112, 3) and x.dtype == torch.uint8
        if torch.equal(x, reference):
            flips.add(False)
        else:
            assert torch.equal(x, reference.flip(1))  # mirrored left to right
            flips.add(True)
    assert flips == {False, True}


def test_batches_are_scaled_where_the_network_runs_as_evaluation_scales_them():
    pixels = torch.randint(
        0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    for name in ("torchvision", "caffe"):  # RGB and BGR
        preset = get_preset(name)
        array = pixels.numpy().transpose(0, 3, 1, 2)  # NumPy, as evaluation always scaled
        array = (array[:, ::-1] if preset.bgr else array).astype(np.float32)
        array = (array * np.float32(preset.scale) - np.float32(preset.mean)[:, None, None]) / (
            np.float32(preset.std)[:, None, None]
        )
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = preset.normalize(pixels, memory_format)
            assert torch.equal(x, torch.from_numpy(array))  # bit for bit
            assert x.is_contiguous(memory_format=memory_format)


class _Niceness(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        return os.nice(0)


def test_training_workers_yield_the_cpu_to_the_network():
    if os.nice(0) >= 19:
        pytest.skip("the tests already run at the lowest priority")
    loader = torch.utils.data.DataLoader(
        _Niceness(), batch_size=None, num_workers=1, worker_init_fn=_init_worker
    )
    assert next(iter(loader)) == min(19, os.nice(0) + WORKER_NICENESS)


AS_ON_WINDOWS = """
import os, sys
sys.modules["fcntl"] = sys.modules["resource"] = None  # importing either fails, as on Windows
del os.nice, os.getloadavg
from squeezenet.cli import main
bench = ["bench", "--arch", "squeezenet1_1", "--batch", "1", "--threads", "1", "--repeats", "1"]
sys.exit(main(sys.argv[1:]) or main(["cache", "list"]) or main([*bench, "--backends", "eager"]))
"""


def test_training_cache_and_bench_need_no_fcntl_resource_nice_or_load_average(tiny, tmp_path):
    """Windows has none of them; every command once failed there (the CLI imports them all)."""
    out = tmp_path / "run"
    args = ["train", str(tiny), "--arch", "squeezenet1_1", "--epochs", "1", "--batch-size", "8",
            "--image-size", "64", "--workers", "1", "--out", str(out)]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", AS_ON_WINDOWS, *args], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert (out / "best.safetensors").is_file()
    assert "train-64px-32-" in run.stdout  # the training images' cache, listed
    assert "load average n/a on" in run.stdout


def test_lr_schedule_warms_up_then_decays_linearly():
    factors = [lr_factor(s, 4, 20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[-1] == pytest.approx(1 / 16)
    assert all(a > b for a, b in zip(factors[4:], factors[5:], strict=False))


def test_stuck_loss_rule():
    assert loss_is_stuck(np.log(1000), 0.001, 1000, step=500, epochs_done=0)
    assert loss_is_stuck(np.log(10), 0.1, 10, step=73, epochs_done=1)
    assert not loss_is_stuck(np.log(1000) * 0.9, 0.001, 1000, step=500, epochs_done=0)
    assert not loss_is_stuck(np.log(10), 0.5, 10, step=500, epochs_done=3)
    # the end of a first short epoch: a slow start, not yet a dead network (plain squeezenet1_1
    # at 2.3046 after 73 steps went on to learn)
    assert not loss_is_stuck(2.3046, 0.11, 10, step=73, epochs_done=0)


def test_classes_the_weights_know_keep_their_classifier_rows(shared, tiny):
    """ImageNet wnid folders: the 4-class head is the 1000-class head's rows, in folder order."""
    weights = str(shared(NCNN))
    order = [CLASSES[2], CLASSES[0], CLASSES[3], CLASSES[1]]  # not the ImageNet order
    cfg = TrainConfig(str(tiny), "unused", arch="squeezenet1_1", weights=weights, num_classes=4)

    def model_for(cfg: TrainConfig) -> torch.nn.Module:  # the head decided as a run decides it
        setup = prepare(cfg, setup_processes("cpu"), resume=False)
        return make_model(setup.cfg, None, setup.pretrained, order)

    model = model_for(cfg)
    full = load_model(weights)
    x = full.weights_info.preprocess(Image.open(sorted((tiny / "val" / CLASSES[1]).iterdir())[0]))
    with torch.no_grad():
        want = full(x[None])[0, [full.weights_info.class_ids.index(c) for c in order]]
        got = model.eval()(x[None])[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # 4 vs 1000 output channels
    reset = model_for(dataclasses.replace(cfg, reset_head=True))
    assert reset.get_classifier().weight.shape[0] == 4
    assert not torch.equal(reset.get_classifier().weight, model.get_classifier().weight)


def test_finetune_loss_falls_and_writes_run_files(finetuned):
    start, *history = finetuned.history  # epoch 0: the starting weights, evaluated
    assert start["epoch"] == 0 and start["train_loss"] is None
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert history[-1]["val_top1"] >= 0.75  # 16 val images of 4 classes; chance is 0.25
    run = finetuned.run_dir
    for name in ("best.safetensors", "last.safetensors", "state.pt", "curves.png", "confusion.png"):
        assert (run / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in rows] == [h["val_top1"] for h in finetuned.history]
    elapsed = [r["elapsed_s"] for r in rows]
    assert 0 < elapsed[0] and elapsed == sorted(elapsed)  # the run's wall time so far
    _, meta = safetensors.read(run / "best.safetensors")
    assert meta["class_ids"] == CLASSES and set(meta["classes"]) == NAMES
    assert meta["num_classes"] == 4 and meta["preprocess"]["crop"] == 96


def test_checkpoint_labels_round_trip_into_predict_and_evaluate(finetuned, tiny, capsys):
    image = sorted((tiny / "val" / CLASSES[1]).iterdir())[0]
    weights = str(finetuned.run_dir / "best.safetensors")
    assert main(["predict", str(image), "--weights", weights, "--json", "--topk", "4"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert {t["label"] for t in top} == NAMES
    assert main(["predict", str(image), "--weights", weights, "--topk", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("  ")[-2] in NAMES
    # evaluate maps the val folders (wnids) through the checkpoint's own class ids
    assert main(["evaluate", str(tiny / "val"), "--weights", weights, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 16
    assert result["top1"] == pytest.approx(finetuned.best_top1)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_resume_with_other_settings_or_data_is_an_error(finetuned, tiny, tmp_path, capsys):
    run = str(finetuned.run_dir)
    code, err = run_cli(["train", str(tiny), "--out", run, "--resume", "--arch", "zfnet"], capsys)
    assert code == 2 and "--arch squeezenet1_1 (asked zfnet)" in err
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    shutil.rmtree(other / "train" / CLASSES[0])
    shutil.rmtree(other / "val" / CLASSES[0])
    code, err = run_cli(["train", str(other), "--out", run, "--resume"], capsys)
    assert code == 2 and "other data" in err and f"missing {CLASSES[0]}" in err
    code, err = run_cli(["train", str(tiny), "--out", run, "--epochs", "1"], capsys)
    assert code == 2 and "already holds a run" in err
    code, err = run_cli(["train", str(tiny), "--out", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and "no training state to resume from" in err


def test_a_run_saved_before_adamw_was_a_choice_resumes_with_sgd(finetuned, tiny, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(finetuned.run_dir, run)
    state = torch.load(run / STATE_FILE, weights_only=False)
    del state["config"]["optimizer"]
    torch.save(state, run / STATE_FILE)
    cfg = TrainConfig(str(tiny), str(run), reset_head=True, workers=0, progress=False)
    result = train(cfg, resume=True)
    assert result.config.optimizer == "sgd" and result.history == finetuned.history


def test_empty_class_folder_is_a_clear_error(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    (data / "train" / "n09999999").mkdir()
    code, err = run_cli(["train", str(data), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "n09999999: class folder has no images" in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_images_are_skipped_and_counted(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    for split in ("train", "val"):  # one damaged JPEG in place of a real one
        victim = sorted((data / split / CLASSES[2]).iterdir())[1]
        victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--arch", "squeezenet1_1",
            "--epochs", "2", "--batch-size", "8", "--image-size", "64", "--workers", "0",
            "--no-progress"]  # fmt: skip
    code, err = run_cli(args, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [(r["train_skipped"], r["val_skipped"], r["val_n"]) for r in rows] == [(1, 1, 15)] * 2
    assert "2 unreadable images skipped" in err


def test_stuck_loss_is_reported(tiny, tmp_path, capsys):
    args = ["train", str(tiny), "--out", str(tmp_path / "run"), "--arch", "squeezenet1_1",
            "--epochs", "3", "--batch-size", "8", "--image-size", "64", "--lr", "0.1",
            "--workers", "0", "--no-progress"]  # fmt: skip
    code, err = run_cli(args, capsys)
    assert code == 0
    assert "is stuck at ln(4) = 1.386" in err and "lower --lr" in err


INTERRUPTED_RUN = """
import os, signal, sys
from squeezenet.engine.train import TrainConfig, train

def stop(step):  # a real signal to this process after optimizer step 7
    if step == 7 and sys.argv[3] != "resume":
        os.kill(os.getpid(), getattr(signal, sys.argv[3]))

cfg = TrainConfig(sys.argv[1], sys.argv[2], arch="squeezenet1_1", epochs=3, batch_size=8,
                  micro_batch=4, image_size=64, lr=0.01, workers=0, save_every=5, progress=False)
try:
    train(cfg, resume=sys.argv[3] == "resume", on_step=stop)
except KeyboardInterrupt:
    sys.exit(130)
"""


def interrupted_run(data: Path, out: Path, how: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", INTERRUPTED_RUN, str(data), str(out), how]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The uninterrupted run: 12 steps (3 epochs x 4, 2 micro-batches each), 2 workers."""
    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = TrainConfig(
        str(tiny), str(out), arch="squeezenet1_1", epochs=3, batch_size=8, micro_batch=4,
        image_size=64, lr=0.01, workers=2, progress=False,
    )  # fmt: skip
    return train(cfg)


@pytest.mark.parametrize("how, saved_step", [("SIGKILL", 5), ("SIGINT", 7)])
def test_interrupted_run_resumes_to_the_same_weights(tiny, tmp_path, reference, how, saved_step):
    """SIGKILL at step 7 loses steps 6-7 (saved every 5); Ctrl-C saves step 7 and exits."""
    run = tmp_path / "run"
    proc = interrupted_run(tiny, run, how)
    assert proc.returncode == (-9 if how == "SIGKILL" else 130), proc.stderr
    state = torch.load(run / "state.pt", weights_only=False)
    assert state["progress"]["step"] == saved_step
    if how == "SIGINT":
        assert "interrupted: saved" in proc.stderr and "--resume" in proc.stderr
    resumed = interrupted_run(tiny, run, "resume")
    assert resumed.returncode == 0, resumed.stderr
    got, _ = safetensors.read(run / "last.safetensors")
    want, _ = safetensors.read(reference.run_dir / "last.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == [h["train_loss"] for h in reference.history]
    assert [r["val_loss"] for r in rows] == [h["val_loss"] for h in reference.history]


def test_a_resumed_fine_tune_keeps_its_new_classifier_and_its_rate(tiny, tmp_path, capsys):
    """Whether the classifier is new is decided from the starting weights, which --resume does
    not load again: the decision is saved with the run, so the resumed run still has a new
    classifier moving at new_head_lr x the rate of the pretrained layers' backbone_lr."""
    from conftest import shared_path

    out = tmp_path / "run"
    weights = str(shared_path(NCNN))
    rates = {"lr": 0.002, "backbone_lr": 0.05, "new_head_lr": 5.0}
    cfg = TrainConfig(str(tiny), str(out), weights=weights, reset_head=True, epochs=2, **rates)
    cfg = dataclasses.replace(cfg, batch_size=8, image_size=64, workers=0, progress=False)

    def stop(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=stop)
    first = capsys.readouterr().err.splitlines()[0]
    assert "(new classifier x5, pretrained layers x0.05)" in first, first
    assert torch.load(out / STATE_FILE, weights_only=False)["progress"]["step"] == 2

    resume = ["train", str(tiny), "--out", str(out), "--resume", "--no-progress"]
    code, err = run_cli(resume, capsys)
    assert code == 0, err
    resumed = err.splitlines()[0]
    assert "(new classifier x5, pretrained layers x0.05)" in resumed, resumed
    assert resumed.endswith("; new classifier"), resumed
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["progress"]["step"] == 8 and state["config"]["new_classifier"] is True
    head, rest = state["optimizer"]["param_groups"]
    assert len(head["params"]) == 2  # conv10's weight and bias
    assert (head["lr_scale"], rest["lr_scale"]) == (5.0, 0.05)
    assert head["lr"] == pytest.approx(100 * rest["lr"])  # the rates of the last step
