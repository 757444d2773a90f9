"""Training and fine-tuning on one process or many (DDP under torchrun), resumable exactly.

The recipe follows DeepScale's solver and torchvision's reference: SGD with momentum 0.9 and
weight decay 2e-4, a linear warm-up then linear ("poly", power 1) decay to zero per step,
random-resized-crop + flip for training, the weights' preset (center crop) for validation.
``batch_size`` is the global batch of one optimizer step: processes x accumulation x micro-batch,
as Caffe's ``iter_size`` did; the default learning rate is 0.04 x batch_size / 512.

Exact resume: the data order (``DistributedSampler`` seeded by epoch), every augmentation
(seeded by seed, epoch and image) and dropout (torch reseeded per step and rank) are functions
of the step, so a run restarted from ``state.pt`` retraces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data.datasets import ImageDataset, collate_skipping, imagenet_classes, labelled_folder
from ..data.transforms import Preprocess, get_preset
from ..errors import SqueezeNetError
from ..inference.pipeline import run as run_inference
from ..models import build_model, default_input_size
from ..weights.load import WeightsInfo, create_model, load_model, save_model
from .augment import AugmentedDataset, TrainTransform
from .checkpoint import STATE_FILE, load_state, save_state, set_rng_states
from .plots import plot_confusion, plot_curves

SAVE_INTERVAL_S = 600  # besides every epoch, save the state at least this often
STUCK_CHECK_STEPS = 200  # look for a loss stuck at ln(classes) this often (and every epoch)


@dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` fields are resolved from the data and weights."""

    data: str
    out: str
    arch: str | None = None  # default: the weights' arch, else squeezenet1_1
    weights: str | None = None  # start from these (classifier replaced if classes differ)
    num_classes: int | None = None  # default: number of class folders (or labels.csv maximum)
    freeze_features: bool = False
    reset_head: bool = False  # a new classifier even when the weights know the data's classes
    epochs: int = 30
    batch_size: int = 512  # global images per optimizer step
    lr: float | None = None  # default 0.04 * batch_size / 512
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup: float = 0.03  # fraction of all steps spent warming up linearly
    image_size: int | None = None  # default: the arch's own (227 for v1.0, else 224)
    min_scale: float = 0.08  # random-resized-crop area range [min_scale, 1]
    seed: int = 0
    # How to run (free to change on --resume):
    micro_batch: int | None = None  # images per forward per process (default 64 CPU, 256 GPU)
    bf16: bool = False
    channels_last: bool = True
    device: str | None = None
    workers: int | None = None
    save_every: int = 0  # also save the state every N steps (0: each epoch and every 10 min)
    progress: bool = True


# Fields that define a run: a --resume that asks for other values is an error.
RUN_FIELDS = (
    "arch", "weights", "num_classes", "freeze_features", "reset_head", "epochs", "batch_size", "lr",
    "momentum", "weight_decay", "warmup", "image_size", "min_scale", "seed",
)  # fmt: skip


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict]
    best_top1: float
    run_dir: Path


@dataclass
class _Env:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Progress:
    """Where the run is, saved with the state: epoch (0-based), step in it, global step."""

    epoch: int = 0
    pos: int = 0
    step: int = 0
    totals: list[float] = field(default_factory=lambda: [0.0] * 4)  # loss, correct, n, skipped
    train_time: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_top1: float = -1.0
    confusion: np.ndarray | None = None


class _StopGuard:
    """SIGINT/SIGTERM inside a step ask for a stop at its end; elsewhere they interrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self.busy = False  # inside a step or the end-of-epoch bookkeeping
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested or not self.busy:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _ignore_sigint(_worker_id: int) -> None:
    """Workers let the main process decide when to stop, so a step can finish after Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Keys:
    """A sampler whose ``(epoch, index)`` keys are set before each epoch's iterator is made."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then linear decay towards 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps))


def loss_is_stuck(loss: float, top1: float, num_classes: int) -> bool:
    """A loss within 2% of ln(classes) with chance accuracy: the network outputs nothing."""
    chance = math.log(num_classes)
    return abs(loss - chance) < 0.02 * chance and top1 < 1.5 / num_classes


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one optimizer step on one rank (dropout draws from it)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _setup_env(device: str | None) -> _Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world == 1:
        return _Env(0, 1, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return _Env(dist.get_rank(), dist.get_world_size(), dev)


def _all_reduce(t: torch.Tensor, env: _Env) -> torch.Tensor:
    if env.world > 1:
        dist.all_reduce(t)
    return t


def _readable_names(class_ids: list[str]) -> list[str]:
    """ImageNet names for wnid folders, else the folder names themselves."""
    imagenet = imagenet_classes()
    if imagenet and set(class_ids) <= set(imagenet[0]):
        names = dict(zip(*imagenet, strict=True))
        return [names[c] for c in class_ids]
    return list(class_ids)


def _load_data(cfg: TrainConfig, preprocess: Preprocess) -> tuple[ImageDataset, ImageDataset]:
    """The train and val splits, labelled consistently; class ids are train's folder names."""
    root = Path(cfg.data)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise SqueezeNetError(
            f"{root}: expected train/ and val/ folders (ImageFolder trees or labels.csv folders)"
        )
    train = labelled_folder(root / "train", preprocess)
    val = labelled_folder(root / "val", preprocess, train.classes, draft_size=preprocess.resize)
    if train.classes is not None and val.classes != train.classes:
        extra = sorted(set(val.classes or []) - set(train.classes))
        raise SqueezeNetError(f"{root / 'val'}: class folders not in train/: {', '.join(extra)}")
    return train, val


def _resolve(cfg: TrainConfig, train: ImageDataset, pretrained: nn.Module | None) -> TrainConfig:
    """Fill the ``None`` fields that define the run."""
    for name in ("epochs", "batch_size", "micro_batch", "image_size"):
        if (value := getattr(cfg, name)) is not None and value < 1:
            raise SqueezeNetError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    found = len(train.classes) if train.classes else max(train.labels) + 1
    if cfg.num_classes is not None and train.classes and cfg.num_classes != found:
        raise SqueezeNetError(
            f"--num-classes {cfg.num_classes} but {cfg.data}/train has {found} class folders"
        )
    arch = cfg.arch or (pretrained.weights_info.arch if pretrained else "squeezenet1_1")
    cfg = dataclasses.replace(
        cfg,
        arch=arch,
        num_classes=cfg.num_classes or found,
        lr=cfg.lr if cfg.lr is not None else 0.04 * cfg.batch_size / 512,
        image_size=cfg.image_size or default_input_size(arch),
    )
    if max(train.labels) >= cfg.num_classes or min(train.labels) < 0:
        raise SqueezeNetError(f"{cfg.data}/train: labels must lie in 0..{cfg.num_classes - 1}")
    return cfg


def _make_model(
    cfg: TrainConfig, state: dict | None, pretrained: nn.Module | None, class_ids: list[str] | None
) -> nn.Module:
    """The model to train: rebuilt from the state, or pretrained, or initialised from scratch."""
    if state is not None:
        model = build_model(cfg.arch, num_classes=cfg.num_classes, **state["model_kwargs"])
        model.weights_info = WeightsInfo(
            cfg.arch, state["model_kwargs"], cfg.num_classes, Preprocess.from_dict(state["preset"])
        )
        return model
    if pretrained is None:
        return create_model(cfg.arch, num_classes=cfg.num_classes)
    info = pretrained.weights_info
    if info.arch != cfg.arch:
        raise SqueezeNetError(f"{cfg.weights}: holds {info.arch} weights, not {cfg.arch}")
    known = info.class_ids or []
    if not cfg.reset_head and class_ids and set(class_ids) <= set(known):
        _keep_rows(pretrained, [known.index(c) for c in class_ids])
        info.extra["head"] = "classifier rows of the weights' own classes kept"
    elif cfg.reset_head or info.num_classes != cfg.num_classes:
        pretrained.reset_classifier(cfg.num_classes)
        info.extra["head"] = "new classifier"
    return pretrained


def _keep_rows(model: nn.Module, rows: list[int]) -> None:
    """Shrink the classifier to ``rows`` of the old one, keeping their trained weights."""
    old = model.get_classifier()
    weight, bias = old.weight.detach()[rows].clone(), old.bias.detach()[rows].clone()
    model.reset_classifier(len(rows))
    new = model.get_classifier()
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)


def _check_resume_data(state: dict, cfg: TrainConfig, train: ImageDataset) -> None:
    old, new = state["class_ids"] or [], train.classes or []
    if old == new and state["n_train"] == len(train):
        return
    gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
    raise SqueezeNetError(
        f"{cfg.out}: --resume with other data: the run was trained on {state['n_train']} images "
        f"of {len(old)} classes, {cfg.data} has {len(train)} of {len(new)}"
        + (f"; missing {', '.join(gone[:5])}" if gone else "")
        + (f"; new {', '.join(added[:5])}" if added else "")
    )


def _check_resume_settings(state: dict, cfg: TrainConfig) -> None:
    saved = state["config"]
    diffs = [
        f"--{k.replace('_', '-')} {saved[k]} (asked {getattr(cfg, k)})"
        for k in RUN_FIELDS
        if saved.get(k) != getattr(cfg, k)
    ]
    if diffs:
        raise SqueezeNetError(
            f"{cfg.out}: --resume of a run made with other settings: {'; '.join(diffs)}"
        )


def _split_batch(cfg: TrainConfig, env: _Env) -> tuple[int, int]:
    """(micro-batch, accumulation steps) with processes x accum x micro = batch_size."""
    if cfg.batch_size % env.world:
        raise SqueezeNetError(
            f"--batch-size {cfg.batch_size} is not a multiple of {env.world} ranks"
        )
    per_rank = cfg.batch_size // env.world
    limit = cfg.micro_batch or (256 if env.device.type == "cuda" else 64)
    accum = math.ceil(per_rank / limit)
    while per_rank % accum:
        accum += 1
    return per_rank // accum, accum


def _shard(val: ImageDataset, env: _Env) -> ImageDataset:
    return ImageDataset(
        val.files[env.rank :: env.world], val.labels[env.rank :: env.world], val.transform,
        draft_size=val.draft_size,
    )  # fmt: skip


def _write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


class Trainer:
    """One run: set up from a config (and a saved state), then ``fit()`` epoch by epoch."""

    def __init__(self, cfg: TrainConfig, env: _Env, resume: bool) -> None:
        out = Path(cfg.out)
        if not resume and (out / STATE_FILE).exists():
            raise SqueezeNetError(
                f"{out}: already holds a run; pass --resume or choose another --out"
            )
        state = load_state(out) if resume else None
        pretrained = load_model(cfg.weights) if cfg.weights and state is None else None
        if state is not None:
            preset = Preprocess.from_dict(state["preset"])
        else:
            preset = pretrained.weights_info.preprocess if pretrained else get_preset("torchvision")
        train, self.val = _load_data(cfg, preset)
        if state is not None:
            _check_resume_data(state, cfg, train)
        cfg = _resolve(cfg, train, pretrained)
        if state is not None:
            _check_resume_settings(state, cfg)
        self.cfg, self.env, self.out, self.n_train = cfg, env, out, len(train)
        self.preset = preset.with_size(cfg.image_size)
        self.val.transform, self.val.draft_size = self.preset, self.preset.resize
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.autocast = torch.autocast(env.device.type, torch.bfloat16, enabled=cfg.bf16)

        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = model = _make_model(cfg, state, pretrained, train.classes)
        info = model.weights_info
        info.preprocess, info.num_classes = self.preset, cfg.num_classes
        info.class_ids = train.classes
        info.classes = _readable_names(train.classes) if train.classes else None
        info.source, info.file_format, info.entry, info.sha256 = str(out), "safetensors", None, ""
        if cfg.freeze_features:
            model.features.requires_grad_(False)
        model.to(env.device, memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        )  # fmt: skip
        self.micro, self.accum = _split_batch(cfg, env)
        self.steps = len(train) // env.world // (self.micro * self.accum)
        if self.steps == 0:
            raise SqueezeNetError(
                f"{cfg.data}/train: {len(train)} images are fewer than one global batch of "
                f"{cfg.batch_size}; lower --batch-size"
            )
        total = self.steps * cfg.epochs
        warm = round(cfg.warmup * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warm, total)
        )
        self.prog = _Progress()
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.prog = _Progress(**state["progress"])
            set_rng_states(state["rng"])
        self.net = model
        if env.world > 1:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)

        self.keys = _Keys()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        workers = cfg.workers if cfg.workers is not None else min(4, (os.cpu_count() or 1) // local)
        transform = TrainTransform(cfg.image_size, self.preset, cfg.min_scale)
        dataset = AugmentedDataset(train, transform, cfg.seed)
        self.loader = DataLoader(
            dataset, batch_size=self.micro, sampler=self.keys, num_workers=workers,
            collate_fn=collate_skipping, pin_memory=env.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
            worker_init_fn=_ignore_sigint,
        )  # fmt: skip
        self.sampler = DistributedSampler(
            train, num_replicas=env.world, rank=env.rank, shuffle=True, seed=cfg.seed,
            drop_last=True,
        )  # fmt: skip
        self.guard = _StopGuard()
        self.warned = False
        self.last_save = time.monotonic()

    def describe(self) -> str:
        cfg, head = self.cfg, self.model.weights_info.extra.get("head")
        return (
            f"training {cfg.arch} on {self.n_train} images of {cfg.num_classes} classes "
            f"({self.steps} steps/epoch): global batch {cfg.batch_size} = {self.env.world} "
            f"process(es) x {self.accum} accumulation x {self.micro}, lr {cfg.lr:g}, "
            f"{cfg.image_size}px, {self.env.device}" + (f"; {head}" if head else "")
        )

    def save(self) -> None:
        """Rank 0 writes last.safetensors and state.pt (both atomically)."""
        self.last_save = time.monotonic()
        if not self.env.main:
            return
        save_model(self.model, self.out / "last.safetensors")
        save_state(self.out, {
            "config": dataclasses.asdict(self.cfg), "class_ids": self.model.weights_info.class_ids,
            "n_train": self.n_train, "model_kwargs": self.model.weights_info.model_kwargs,
            "preset": self.preset.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "progress": dataclasses.asdict(self.prog),
        })  # fmt: skip

    def fit(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        if self.env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            print(self.describe(), file=sys.stderr)
        with self.guard:
            try:
                while self.prog.epoch < self.cfg.epochs:
                    self._train_epoch(on_step)
                    metrics, confusion = self._validate()
                    self._end_epoch(metrics, confusion)
            except KeyboardInterrupt:
                if not self.guard.busy:  # between steps, model and optimizer are consistent
                    self.save()
                    if self.env.main:
                        where = f"epoch {self.prog.epoch + 1}, step {self.prog.step}"
                        print(f"interrupted: saved {self.out / STATE_FILE} ({where}); continue "
                              "with --resume", file=sys.stderr)  # fmt: skip
                raise
        info = self.model.weights_info
        if self.env.main and self.prog.confusion is not None:
            names = info.classes or [str(i) for i in range(self.cfg.num_classes)]
            plot_confusion(self.prog.confusion, names, self.out / "confusion.png")
        return TrainResult(self.model, self.prog.history, self.prog.best_top1, self.out)

    def _train_epoch(self, on_step: Callable[[int], None] | None) -> None:
        prog, cfg = self.prog, self.cfg
        per_step = self.micro * self.accum
        self.sampler.set_epoch(prog.epoch)
        order = list(self.sampler)[prog.pos * per_step : self.steps * per_step]
        self.keys.keys = [(prog.epoch, i) for i in order]
        self.model.train()
        if cfg.freeze_features:
            self.model.features.eval()
        batches = iter(self.loader)
        bar = tqdm(
            total=self.steps, initial=prog.pos, desc=f"epoch {prog.epoch + 1}/{cfg.epochs}",
            unit="step", disable=not (cfg.progress and self.env.main), dynamic_ncols=True,
        )  # fmt: skip
        while prog.pos < self.steps:
            self.guard.busy = True
            start = time.perf_counter()
            stop, totals = self._step(batches)
            prog.step, prog.pos = prog.step + 1, prog.pos + 1
            prog.totals = [a + b for a, b in zip(prog.totals, totals, strict=True)]
            prog.train_time += time.perf_counter() - start
            self.guard.busy = False
            loss, acc = self._train_metrics()
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.1%}",
                            img_s=f"{prog.totals[2] / prog.train_time:.0f}")  # fmt: skip
            if prog.step % STUCK_CHECK_STEPS == 0:
                self._check_stuck(loss, acc)
            if stop:
                raise KeyboardInterrupt  # saved by fit()
            if cfg.save_every and prog.step % cfg.save_every == 0:
                self.save()
            elif time.monotonic() - self.last_save > SAVE_INTERVAL_S:
                self.save()
            if on_step:
                on_step(prog.step)
        bar.close()

    def _step(self, batches) -> tuple[bool, list[float]]:
        """One optimizer step over ``accum`` micro-batches; (stop requested, global totals)."""
        env, prog = self.env, self.prog
        torch.manual_seed(step_seed(self.cfg.seed, prog.step, env.rank))
        stats = torch.zeros(6, dtype=torch.float64, device=env.device)  # stop, bad, totals
        for k in range(self.accum):
            batch = next(batches)
            if batch is None:
                if env.world > 1:
                    raise SqueezeNetError(
                        f"{self.cfg.data}: a whole micro-batch of {self.micro} images was "
                        "unreadable; remove the damaged files"
                    )
                stats[5] += self.micro
                continue
            x, y, _, skipped = batch
            x = x.to(env.device, non_blocking=True, memory_format=self.memory_format)
            y = y.to(env.device, non_blocking=True)
            sync = k == self.accum - 1 or env.world == 1
            with nullcontext() if sync else self.net.no_sync(), self.autocast:
                logits = self.net(x).float()
                loss = F.cross_entropy(logits, y)
                (loss / self.accum).backward()
            stats[2] += loss.detach() * len(y)
            stats[3] += (logits.argmax(1) == y).sum()
            stats[4] += len(y)
            stats[5] += skipped
        stats[0] = float(self.guard.requested)
        stats[1] = float(not math.isfinite(stats[2].item()))
        stop, bad, *totals = _all_reduce(stats, env).tolist()
        if bad:
            saved = self.out / STATE_FILE
            note = f"; {saved} holds the last good checkpoint" if saved.exists() else ""
            raise SqueezeNetError(
                f"the loss became {totals[0] / max(totals[2], 1):.3g} at step {prog.step} (lr "
                f"{self.scheduler.get_last_lr()[0]:.3g}): lower --lr{note}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return bool(stop), totals

    def _train_metrics(self) -> tuple[float, float]:
        n = max(self.prog.totals[2], 1)
        return self.prog.totals[0] / n, self.prog.totals[1] / n

    def _check_stuck(self, loss: float, acc: float) -> bool:
        """Whether the loss sits at ln(classes); warn once, after the first epoch or 200 steps."""
        cfg = self.cfg
        stuck = loss_is_stuck(loss, acc, cfg.num_classes)
        settled = self.prog.step >= STUCK_CHECK_STEPS or self.prog.epoch >= 1
        if stuck and settled and not self.warned:
            self.warned = True
            _warn(
                f"training loss {loss:.3f} is stuck at ln({cfg.num_classes}) = "
                f"{math.log(cfg.num_classes):.3f} after {self.prog.step} steps: the network "
                "outputs no signal (typical of networks without BatchNorm, like SqueezeNet, at too "
                f"high a learning rate); try a lower --lr than {cfg.lr:g} or a *_bn architecture"
            )
        return stuck

    def _validate(self) -> tuple[dict, np.ndarray]:
        """Loss, top-1/top-5 and confusion matrix on the validation split (sharded over ranks)."""
        env, n_cls = self.env, self.cfg.num_classes
        shard = _shard(self.val, env)

        def forward(x: torch.Tensor) -> torch.Tensor:
            with self.autocast:
                return self.model(x.to(env.device, memory_format=self.memory_format)).float().cpu()

        self.model.eval()
        logits, skipped = run_inference(
            forward, shard, batch_size=self.micro, workers=self.cfg.workers,
            progress=self.cfg.progress and env.main, desc="validate",
        )  # fmt: skip
        keep = np.setdiff1d(np.arange(len(shard)), skipped)
        target = torch.from_numpy(np.asarray(shard.labels, np.int64)[keep])
        logits = torch.from_numpy(logits[keep]) if keep.size else torch.zeros(0, n_cls)
        top = logits.topk(min(5, n_cls), 1).indices
        confusion = torch.zeros(n_cls, n_cls, dtype=torch.float64)
        confusion.index_put_((target, top[:, 0]), torch.ones(len(target), dtype=torch.float64),
                             accumulate=True)  # fmt: skip
        totals = torch.tensor([
            F.cross_entropy(logits, target, reduction="sum").item() if keep.size else 0.0,
            (top == target[:, None]).any(1).sum().item(), keep.size, len(skipped),
        ], dtype=torch.float64)  # fmt: skip
        both = _all_reduce(torch.cat([totals, confusion.flatten()]).to(env.device), env).cpu()
        loss, top5, n, n_skipped = both[:4].tolist()
        confusion = both[4:].reshape(n_cls, n_cls).numpy().astype(np.int64)
        n = max(n, 1)
        return {
            "val_loss": loss / n, "val_top1": float(np.trace(confusion)) / n, "val_top5": top5 / n,
            "val_n": int(n), "val_skipped": int(n_skipped),
        }, confusion  # fmt: skip

    def _end_epoch(self, metrics: dict, confusion: np.ndarray) -> None:
        """Record the epoch, write metrics, curves and checkpoints; uninterruptible."""
        prog, cfg = self.prog, self.cfg
        self.guard.busy = True
        loss, acc = self._train_metrics()
        row = {
            "epoch": prog.epoch + 1, "step": prog.step, "lr": self.scheduler.get_last_lr()[0],
            "train_loss": loss, "train_top1": acc, **metrics,
            "train_images_per_s": prog.totals[2] / max(prog.train_time, 1e-9),
            "train_skipped": int(prog.totals[3]), "stuck": self._check_stuck(loss, acc),
        }  # fmt: skip
        prog.history.append(row)
        prog.confusion = confusion
        if self.env.main:
            _report_epoch(row, cfg)
            if metrics["val_top1"] > prog.best_top1:
                save_model(self.model, self.out / "best.safetensors")
            _write_jsonl(prog.history, self.out / "metrics.jsonl")
            plot_curves(prog.history, self.out / "curves.png")
        prog.best_top1 = max(prog.best_top1, metrics["val_top1"])
        prog.epoch, prog.pos, prog.totals, prog.train_time = prog.epoch + 1, 0, [0.0] * 4, 0.0
        self.save()
        self.guard.busy = False
        if self.guard.requested:
            raise KeyboardInterrupt


def train(
    cfg: TrainConfig, *, resume: bool = False, on_step: Callable[[int], None] | None = None
) -> TrainResult:
    """Train (or fine-tune) as ``cfg`` says, writing checkpoints, metrics and plots to ``cfg.out``.

    ``resume`` continues the run saved in ``cfg.out``; ``on_step(step)`` is called after every
    optimizer step (and after any checkpoint it triggered). Under torchrun, every process calls
    this with the same config; rank 0 does all file I/O.
    """
    env = _setup_env(cfg.device)
    try:
        return Trainer(cfg, env, resume).fit(on_step)
    finally:
        if env.world > 1:
            dist.destroy_process_group()


def _report_epoch(m: dict, cfg: TrainConfig) -> None:
    skipped = m["train_skipped"] + m["val_skipped"]
    note = f", {skipped} unreadable images skipped" if skipped else ""
    tqdm.write(
        f"epoch {m['epoch']}/{cfg.epochs}: train loss {m['train_loss']:.4f} top-1 "
        f"{m['train_top1']:.2%} | val loss {m['val_loss']:.4f} top-1 {m['val_top1']:.2%} "
        f"top-5 {m['val_top5']:.2%} | {m['train_images_per_s']:.1f} img/s{note}",
        file=sys.stderr,
    )
