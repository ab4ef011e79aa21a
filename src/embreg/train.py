"""Hydra entry point for one run: ``python -m embreg.train objective=svmax seed=1``.

With ``--multirun`` Hydra sweeps objectives x seeds through the launcher in
conf/hydra/launcher/ (the sweep stage does this). Below this file nothing sees a DictConfig.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from embreg.config import register_configs, to_run_config

# $EMBREG_CONF: set by the stage scripts to their checkout's conf/ (see embreg.params.conf_dir)
CONF_DIR = os.environ.get("EMBREG_CONF") or str(Path(__file__).resolve().parents[2] / "conf")


register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    from embreg.run import run_one  # torch is imported here, not at plugin discovery

    status = run_one(to_run_config(cfg))
    print(f"[embreg] {status.get('run_id')} seed{status.get('seed')}: {status['state']}"
          + (f" ({status['error']})" if status.get("error") else ""), flush=True)
    return status


if __name__ == "__main__":
    main()
