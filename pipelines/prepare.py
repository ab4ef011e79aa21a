"""DVC stage `prepare`: make the profile's dataset available, write label subsets and card."""

from __future__ import annotations

import sys

from _common import fail
from embreg.data.prepare import card_markdown, check_dataset_key, prepare
from embreg.io import write_json, write_text
from embreg.params import compose_run, load_params


def main() -> None:
    params = load_params()
    cfg = compose_run(params.profile, params.overrides)
    check_dataset_key(params.dataset, params.profile, cfg.dataset)
    card = prepare(params.data_dir, cfg.dataset, params.mirror(cfg.dataset.name))
    write_json(f"results/data/{cfg.dataset.name}.json", card)
    write_text(f"results/data/{cfg.dataset.name}.md", card_markdown(card))
    print(f"prepared {cfg.dataset.name}: train {card['splits']['train']['size']}, "
          f"test {card['splits']['test']['size']}, subsets "
          + ", ".join(f"{k}={v['size']}" for k, v in card["subsets"].items()))


if __name__ == "__main__":
    sys.exit(fail(main))
