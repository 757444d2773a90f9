"""``squeezenet cache``: list or clear the decoded-image caches that ``train`` builds."""

from __future__ import annotations

import argparse
import time

from .common import non_negative_float


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache",
        help="list or clear the decoded-image caches (train's --no-cache builds none)",
        description="The decoded-image caches under $SQUEEZENET_HOME/cache: 'list' shows each "
        "with its size and when a run last used it; 'clear' deletes them (all, or those unused "
        "for --unused-days), except those a run is still building. A run that is reading a cache "
        "keeps it until it ends.",
    )
    p.add_argument("action", nargs="?", choices=["list", "clear"], default="list")
    p.add_argument(
        "--unused-days", type=non_negative_float, metavar="D",
        help="clear: only caches no run has used for D days",
    )  # fmt: skip
    p.set_defaults(run=run_cache)


def run_cache(args: argparse.Namespace) -> None:
    from ..data.cache import cache_dir, list_caches, remove

    entries = list_caches()
    if args.action == "clear":
        cutoff = time.time() - 86400 * args.unused_days if args.unused_days is not None else None
        old = [
            e
            for e in entries
            if e.state != "being built" and (cutoff is None or e.last_used < cutoff)
        ]
        # a file in use stays where the system refuses to delete it (Windows)
        gone = [e for e in old if all([remove(path) for path in e.paths])]
        kept = len(entries) - len(gone)
        print(
            f"{cache_dir()}: deleted {len(gone)} caches ({sum(e.size for e in gone) / 1e6:,.0f} "
            f"MB), kept {kept}"
        )
        return
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        state = "" if e.state == "complete" else f"  ({e.state})"
        print(f"{e.size / 1e6:>9,.0f} MB  {used}  {e.name}{state}")
    total = sum(e.size for e in entries)
    print(f"{total / 1e6:>9,.0f} MB  in {len(entries)} caches: {cache_dir()}")
