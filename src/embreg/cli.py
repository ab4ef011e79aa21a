"""The `embreg` command: one subcommand per tool, each a module with ``main(argv) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module whose main() it runs, one-line help); modules are imported on use only
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("embreg.sweep.status", "which runs are done, running, queued, failed, ... per profile and ablation"),
    "collapse": ("embreg.audit", "collapse metrics of any trained ResNet (a run, its checkpoint, a torchvision state_dict), layer by layer"),
    "bench": ("embreg.bench", "time SVMax, the VICReg terms and pretraining; writes results/bench"),
    "export": ("embreg.sweep.export", "a profile's finished runs (no checkpoints) in one archive, for another machine"),
    "import": ("embreg.sweep.merge", "verify an `embreg export` archive and merge its runs into results/<profile>/runs"),
    "migrate": ("embreg.sweep.migrate", "carry finished runs over to this checkout's fingerprints where their config "
                                        "and code did not change (no retraining)"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``embreg COMMAND ARGS...`` to COMMAND's main(ARGS) (its own --help included)."""
    parser = argparse.ArgumentParser(prog="embreg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    args, rest = parser.parse_known_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
