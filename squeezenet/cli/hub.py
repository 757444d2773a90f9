"""``squeezenet hub save|push``: Hugging Face Hub-shaped model folders, and their upload."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SqueezeNetError
from .common import add_progress_arg, add_weights_args, existing_dir, model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    hub = subparsers.add_parser("hub", help="write a Hub-shaped model folder, or upload one")
    commands = hub.add_subparsers(dest="hub_command", required=True, metavar="ACTION")
    p = commands.add_parser("save", help="config.json + model.safetensors + a measured card")
    add_weights_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="the folder to write")
    p.add_argument(
        "--eval", action="append", metavar="DATA", type=existing_dir,
        help="evaluate on DATA (labels.csv folder or class folders) and put the result in the "
        "card's model-index; repeat for several data sets",
    )  # fmt: skip
    p.add_argument(
        "--with", dest="extras", metavar="TARGETS",
        help="deploy files to add, comma-separated (onnx, pt2, executorch, ncnn)",
    )  # fmt: skip
    add_progress_arg(p)
    p.set_defaults(run=run_save, command="hub save")
    p = commands.add_parser("push", help="upload a folder to the Hub (huggingface_hub)")
    p.add_argument("folder", metavar="DIR", type=existing_dir)
    p.add_argument("repo", metavar="ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(run=run_push, command="hub push")


def run_save(args: argparse.Namespace) -> None:
    from ..inference.hub import save_folder

    model = model_from_args(args)
    extras = [name for name in (args.extras or "").split(",") if name]
    runs = save_folder(
        model, args.output, evals=args.eval or [], extras=extras, progress=not args.no_progress
    )
    print(f"{args.output}: {model.weights_info.arch} as a Hub folder")
    for run in runs:
        print(f"  {run.dataset}: top-1 {run.top1:.2%}  top-5 {run.top5:.2%}  ({run.n} images)")


def run_push(args: argparse.Namespace) -> None:
    from ..weights.hub import CONFIG

    folder = Path(args.folder)
    if not (folder / CONFIG).is_file():
        raise SqueezeNetError(f"{folder}: no {CONFIG}; write the folder with 'squeezenet hub save'")
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise SqueezeNetError(
            "hub push needs huggingface_hub: pip install 'squeezenet[hub]'"
        ) from None
    api = HfApi()
    try:
        api.create_repo(args.repo, private=args.private, exist_ok=True)
        commit = api.upload_folder(repo_id=args.repo, folder_path=folder)
    except (HfHubHTTPError, OSError) as e:  # refused by the Hub, or no network
        raise SqueezeNetError(f"{args.repo}: upload failed ({str(e).splitlines()[0]})") from None
    print(f"{folder} -> {getattr(commit, 'commit_url', args.repo)}")
