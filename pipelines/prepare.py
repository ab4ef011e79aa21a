"""DVC stage `prepare`: make params.yaml's dataset available, write its label subsets and card.

It reads the dataset's keys alone (``dataset``, ``data.dir``, its mirror), never a pipeline's:
the dataset's files come from conf/dataset/<name>.yaml. The whole params.yaml is checked first,
and the new data is prepared beside the old one and swapped in only once complete (dvc.yaml
keeps the old data: ``persist``), so a failure or an interrupt leaves the prepared data as it was.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from _common import fail
from embreg.data.prepare import card_markdown, prepare
from embreg.io import write_json, write_text
from embreg.params import compose_run, load_params


def main() -> None:
    params = load_params()  # every section checked, before anything is touched
    if not params.dataset:
        raise ValueError("params.yaml has no `dataset`; set it to the pipelines' dataset, e.g. dataset: fashion_mnist")
    cfg = compose_run("default", [f"dataset={params.dataset}"]).dataset
    root = Path(params.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-prepare-", dir=root))
    try:
        card = prepare(staging, cfg, params.mirror(cfg.name))
        swap_in(staging / cfg.name, root / cfg.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(f"results/data/{cfg.name}.json", card)
    write_text(f"results/data/{cfg.name}.md", card_markdown(card))
    print(f"prepared {cfg.name}: train {card['splits']['train']['size']}, "
          f"test {card['splits']['test']['size']}, subsets "
          + ", ".join(f"{k}={v['size']}" for k, v in card["subsets"].items()))


def swap_in(new: Path, final: Path) -> None:
    """Put ``new`` at ``final`` by two renames (the old data moved aside first, deleted last):
    cut between them, by an error or a signal, the old data is moved back."""
    old = final.with_name(f".{final.name}-old")
    shutil.rmtree(old, ignore_errors=True)  # left by a swap cut short after its second rename
    if final.exists():
        final.rename(old)
    try:
        new.rename(final)
    except BaseException:
        if old.exists() and not final.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(fail(main))
