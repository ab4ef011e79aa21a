"""Hydra entry point for one run: ``python -m embreg.train objective=svmax seed=1``.

With ``--multirun`` Hydra sweeps objectives x seeds through the launcher in
conf/hydra/launcher/ (the sweep stage does this). Below this file nothing sees a DictConfig.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from embreg.config import register_configs, to_run_config

# $EMBREG_CONF: set by the stage scripts to their checkout's conf/ (see embreg.params.conf_dir)
CONF_DIR = os.environ.get("EMBREG_CONF") or str(Path(__file__).resolve().parents[2] / "conf")


register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from embreg.run import run_one  # torch is imported here, not at plugin discovery

    single = HydraConfig.get().mode.name == "RUN"
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        from embreg.preemption import stop_on_term

        stop_on_term()  # a local job stops on TERM (the sweep was interrupted), not only logs it
    try:
        status = run_one(to_run_config(cfg))
    except _refusals() as exc:
        if not single:
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"[embreg] {status.get('run_id')} seed{status.get('seed')}: {status['state']}"
          + (f" ({status['error']})" if status.get("error") else ""), flush=True)
    if single and status["state"] != "done":
        sys.exit(1)
    return status


def main() -> None:
    """``python -m embreg.train`` / ``embreg-train``: a bad override is one line on stderr and
    exit status 2, not Hydra's report; then the run, whose exit status says how it ended
    (0 done, 1 failed or diverged, 2 refused: invalid config, missing data, locked)."""
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):  # plain overrides: compose them once first
        try:
            check_overrides(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
    hydra_main()


def check_overrides(args: list[str]) -> None:
    """Compose ``args`` (command-line overrides, ``profile=`` among them) as a run would;
    raises a one-line ConfigError for a malformed one, an unknown key or a bad value."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from embreg.checks import ConfigError, explain_hydra, override_problems

    if bad := override_problems(args):
        raise ConfigError(bad[0])
    ours = [a for a in args if not a.lstrip("+~").startswith("hydra")]  # Hydra's own settings: Hydra's to check
    try:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            to_run_config(compose("config", overrides=ours))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(explain_hydra(exc, ours)) from None


def _refusals() -> tuple[type[BaseException], ...]:
    """What ``run_one`` raises for a run that must not start (imported with torch, on use)."""
    from embreg.attempt import RunLockedError
    from embreg.checks import ConfigError
    from embreg.data import DataUnavailableError
    from embreg.registry import UnknownNameError

    return ConfigError, UnknownNameError, DataUnavailableError, RunLockedError


if __name__ == "__main__":
    main()
