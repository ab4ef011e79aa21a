"""DVC stage `prepare`: make the profile's dataset available, write label subsets and card."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from _common import fail
from embreg.data.prepare import card_markdown, check_dataset_key, prepare
from embreg.io import write_json, write_text
from embreg.params import compose_run, load_params


def _raw_params() -> dict:
    return yaml.safe_load(Path("params.yaml").read_text()) or {}


def main() -> None:
    params, raw = load_params(), _raw_params()
    cfg = compose_run(params.profile, params.overrides)
    check_dataset_key(raw.get("dataset"), params.profile, cfg.dataset)
    # data.mirrors: one local mirror per dataset; a single data.mirror applies to any dataset
    mirror = ((raw.get("data") or {}).get("mirrors") or {}).get(cfg.dataset.name) or params.mirror
    card = prepare(params.data_dir, cfg.dataset, mirror)
    write_json(f"results/data/{cfg.dataset.name}.json", card)
    write_text(f"results/data/{cfg.dataset.name}.md", card_markdown(card))
    print(f"prepared {cfg.dataset.name}: train {card['splits']['train']['size']}, "
          f"test {card['splits']['test']['size']}, subsets "
          + ", ".join(f"{k}={v['size']}" for k, v in card["subsets"].items()))


if __name__ == "__main__":
    sys.exit(fail(main))
