"""One entry point per stage. Snakemake rules call these; so can you.

    python -m phaseflip.cli <stage> --params '<json of the config sections it needs>' [files...]

The stages, their arguments and what each writes: `phaseflip.dag.STAGES`. This module only parses a
stage's arguments, seeds, sets the thread count and calls `phaseflip.stages.<stage>.run`. Every stage
validates its params, writes its outputs atomically, and exits 2 with a one-line message (file, line,
field) on bad input instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from typing import Any

from phaseflip.config import ConfigError
from phaseflip.dag import COMMANDS, STAGES, Stage
from phaseflip.io import DataError, seed_everything, set_threads


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phaseflip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for command, stage in COMMANDS.items():
        sp = sub.add_parser(command, help="; or ".join(s.summary for s in STAGES if s.command == command))
        sp.add_argument("--params", required=True, help="JSON of the config sections this stage needs")
        sp.add_argument("--threads", type=int, default=None, help="torch threads (the Snakemake job's threads)")
        sp.add_argument("--out", required=True)
        for f in stage.files:
            sp.add_argument(f"--{f.replace('_', '-')}", dest=f, required=True)
        for f in stage.lists:
            sp.add_argument(f"--{f.replace('_', '-')}", dest=f, nargs="*", default=[])
        for f, help_text in stage.options:
            sp.add_argument(f"--{f.replace('_', '-')}", dest=f, help=help_text)
    return p


def start(params_json: str, threads: int | None) -> dict[str, Any]:
    """The stage's params; every random generator seeded from them, torch and BLAS set to `threads`."""
    params: dict[str, Any] = json.loads(params_json)
    seed_everything(int(params.get("seed", 0)))
    set_threads(threads)
    return params


def run_stage(stage: Stage, args: argparse.Namespace) -> None:
    params = start(args.params, args.threads)
    run = importlib.import_module(stage.module).run
    names = ("out", *stage.files, *stage.lists, *(f for f, _ in stage.options))
    kwargs = {name: getattr(args, name) for name in names}
    if "threads" in inspect.signature(run).parameters:
        kwargs["threads"] = args.threads
    run(params, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run_stage(COMMANDS[args.stage], args)
    except (DataError, ConfigError) as err:
        print(f"phaseflip {args.stage}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
