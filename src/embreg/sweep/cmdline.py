"""What the `embreg` subcommands that work on a profile's runs share (export, migrate): the
``--profile`` and ``--params`` arguments, and the plan they name, with a user error printed as
one line per problem (exit status 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embreg.checks import ConfigError
from embreg.params import PipelineParams, check_option, group_options, load_params
from embreg.registry import UnknownNameError
from embreg.sweep.plan import Plan, make_plan


def add_profile_args(p: argparse.ArgumentParser, params_help: str = "") -> None:
    p.add_argument("--profile", metavar="NAME", help=f"one of: {', '.join(group_options('profile'))} (default: "
                   "params.yaml's default pipeline's), with the knobs of the section that runs it")
    p.add_argument("--params", default="params.yaml", help=f"params file (default: %(default)s){params_help}")


def errors(exc: Exception) -> int:
    """``exc`` on stderr, one ``error:`` line per line of it; exit status 2."""
    for line in str(exc).splitlines():
        print(f"error: {line}", file=sys.stderr)
    return 2


def profile_plan(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[PipelineParams, Plan] | int:
    """The params and plan of ``args.profile`` under ``args.params``, or the exit status after
    printing why not (a missing params file is argparse's usage error)."""
    if not Path(args.params).is_file():
        ap.error(f"no params file {args.params}")
    try:
        params = load_params(args.params)
        params = params.for_profile(check_option("profile", args.profile or params.profile))
        return params, make_plan(params)
    except (ConfigError, UnknownNameError) as exc:
        return errors(exc)
