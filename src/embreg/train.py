"""Hydra entry point for one run: ``python -m embreg.train objective=svmax seed=1``.

With ``--multirun`` Hydra sweeps objectives x seeds through the launcher in
conf/hydra/launcher/ (the sweep stage does this). Below this file nothing sees a DictConfig.

Every command line is checked before Hydra starts (single runs and multiruns alike, each value
of a sweep composed once): a malformed override, an unknown key (``+pretrain.foo=1`` included),
an unknown name or a bad value is one line on stderr and exit status 2, and nothing is written.

A run started by hand whose overrides change its science config (``pretrain.epochs=1``) gets a
place of its own: its run id carries the changed keys (``svmax@epochs=1``), as a sweep point's
does, so it never lands on the profile's own run. The sweep's jobs pass ``runtime.replace=true``:
their directories are theirs to update when the config changes.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from embreg.config import RunConfig, register_configs, to_run_config

# $EMBREG_CONF: set by the stage scripts to their checkout's conf/ (see embreg.params.conf_dir)
CONF_DIR = os.environ.get("EMBREG_CONF") or str(Path(__file__).resolve().parents[2] / "conf")
MAX_TAGS = 3  # changed keys named in a hand run's id; more, and the command says how to place the run
log = logging.getLogger("embreg.train")

register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from embreg.run import run_one  # torch is imported here, not at plugin discovery
    from embreg.rundir import run_dir

    hc = HydraConfig.get()
    single = hc.mode.name == "RUN"
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        from embreg.preemption import stop_on_term

        stop_on_term()  # a local job stops on TERM (the sweep was interrupted), not only logs it
    try:
        run_cfg = place_hand_run(to_run_config(cfg), list(hc.overrides.task))
        log.info("run %s seed%d: results in %s", run_cfg.arm, run_cfg.seed, run_dir(run_cfg))
        status = run_one(run_cfg)
    except _refusals() as exc:
        log.error("refused: %s", exc)
        if not single:
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    line = (f"{status.get('run_id')} seed{status.get('seed')}: {status['state']}"
            + (f" ({status['error']})" if status.get("error") else ""))
    log.info("%s; results in %s", line, run_dir(run_cfg))
    print(f"[embreg] {line}", flush=True)
    if single and status["state"] != "done":
        sys.exit(1)
    return status


def main() -> None:
    """``python -m embreg.train`` / ``embreg-train``: a bad override is one line on stderr and
    exit status 2, not Hydra's report; then the run, whose exit status says how it ended
    (0 done, 1 failed or diverged, 2 refused: invalid config, missing data, locked)."""
    # what a person ran, recorded by the run (embreg.provenance); the jobs of a multirun inherit it
    os.environ.setdefault("EMBREG_COMMAND", " ".join(["python -m embreg.train", *sys.argv[1:]]))
    try:
        check_overrides(sys.argv[1:])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    hydra_main()


def check_overrides(args: list[str]) -> None:
    """Compose every run ``args`` stands for (a multirun's sweeps expanded) as the run would, and
    check it (embreg.checks, data-aware): raises a one-line ConfigError for a malformed override,
    an unknown key, an unknown name or a bad value. Informational commands (--help, --cfg) pass."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from embreg import checks
    from embreg.checks import ConfigError
    from embreg.overrides import expand, explain_hydra, override_problems, split_args, unknown_keys

    overrides, multirun, info = split_args(args)
    if info:
        return
    if bad := override_problems(overrides):
        raise ConfigError(bad[0])
    ours = [a for a in overrides if not a.lstrip("+~").startswith("hydra")]  # Hydra's own settings: Hydra's to check
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        for combo in expand(ours) if multirun else [ours]:
            try:
                cfg = place_hand_run(to_run_config(compose("config", overrides=combo)), combo, compose)
            except (HydraException, OmegaConfBaseException) as exc:
                raise ConfigError(explain_hydra(exc, combo)) from None
            if bad := unknown_keys(cfg, combo):
                raise ConfigError(bad[0])
            checks.validate(cfg)


def place_hand_run(cfg: RunConfig, overrides: list[str], compose: Any = None) -> RunConfig:
    """``cfg`` with its run id naming the science keys its overrides change from the profile's
    own config of the same arm (``tag_keys``), unless the run is the sweep's
    (``runtime.replace``) or names its tags itself. More than ``MAX_TAGS`` changed keys: a
    one-line ConfigError saying how to give the run a place (``tag_keys``, ``paths.results``)."""
    if cfg.runtime.replace or cfg.tag_keys:
        return cfg
    if compose is None:
        from hydra import compose
    base_ov = [o for o in overrides if o.lstrip("+~").partition("=")[0] in ("profile", "objective", "seed", "arm")]
    base = to_run_config(compose("config", overrides=base_ov))
    changed = _changed_leaves(base.science(), cfg.science())
    if not changed:
        return cfg
    if len(changed) > MAX_TAGS or any(isinstance(v, dict | list) for v in changed.values()):
        from embreg.checks import ConfigError

        names = ", ".join(list(changed)[:6]) + (", ..." if len(changed) > 6 else "")
        raise ConfigError(f"these overrides change {len(changed)} values of the {cfg.profile.name} profile's "
                          f"{cfg.arm} run ({names}); give the run a place of its own: tag_keys=[<key>,...] names "
                          "it after the keys you choose, or paths.results=<dir> puts it elsewhere")
    cfg.tag_keys = list(changed)
    return cfg


def _changed_leaves(a: Any, b: Any, prefix: str = "") -> dict[str, Any]:
    """The dotted keys whose values differ between two nested dicts (b's values); a dict that
    appears or vanishes counts as one changed key."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, Any] = {}
        for k in [*a, *(k for k in b if k not in a)]:
            out.update(_changed_leaves(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return {} if a == b else {prefix.rstrip("."): b}


def _refusals() -> tuple[type[BaseException], ...]:
    """What ``run_one`` raises for a run that must not start (imported with torch, on use)."""
    from embreg.attempt import RunLockedError
    from embreg.checks import ConfigError
    from embreg.data import DataUnavailableError
    from embreg.registry import UnknownNameError

    return ConfigError, UnknownNameError, DataUnavailableError, RunLockedError


if __name__ == "__main__":
    main()
