"""The ``prepare`` stage's work: fetch a dataset, write its label subsets and its card."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from embreg.config import DatasetConfig
from embreg.data.datasets import DATASETS, DataUnavailableError, fetch_atomically, md5
from embreg.data.subsets import CLASS_SPLIT_RULE, balanced_subset, class_split, subset_name, write_index_file


def _counts(labels) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(labels.tolist()).items())}


def check_dataset_key(declared: str | None, profile: str, cfg: DatasetConfig) -> None:
    """params.yaml's ``dataset`` names the prepare stage's outputs (DVC sees only params.yaml),
    so it must be the profile's dataset."""
    if declared != cfg.name:
        raise ValueError(f"params.yaml has dataset: {declared} but profile {profile!r} uses dataset "
                         f"{cfg.name!r}; set dataset: {cfg.name}")


def prepare(data_dir: str | Path, cfg: DatasetConfig, mirror: str | None) -> dict[str, Any]:
    """Make ``cfg.name`` available under ``data_dir/<name>`` and return its card.

    Nothing is left behind on failure: files are written to a temporary directory that is
    renamed into place only once the raw files read back and the subsets are written.
    """
    spec = DATASETS.get(cfg.name)
    card: dict[str, Any] = {}

    def finish(root: Path) -> None:
        train, test = spec.read(root, True), spec.read(root, False)
        subsets = {}
        for frac in cfg.subset_fractions:
            name = subset_name(frac)
            if spec.subsets is None:
                idx, about = balanced_subset(train.labels, frac, cfg.subset_seed), {"seed": cfg.subset_seed}
            else:  # the dataset's own published lists (ImageNet: SimCLR's)
                idx, about = spec.subsets(root, train, frac)
            path = root / "subsets" / f"{name}.txt"
            write_index_file(path, idx)
            subsets[name] = {"fraction": frac, "size": len(idx), **about,
                             "per_class": _counts(train.labels[idx]), "md5": md5(path)}
        card.update({
            "dataset": cfg.name,
            "image_shape": list(train.images.shape[1:]),
            "splits": {"train": {"size": len(train), "per_class": _counts(train.labels)},
                       "test": {"size": len(test), "per_class": _counts(test.labels)}},
            "subsets": subsets,
            "raw_md5": {f: md5(root / f) for f in spec.raw_files},
        })
        seen, held = class_split(cfg.num_classes)
        card["class_split"] = {"train": seen, "retrieval": held, "rule": CLASS_SPLIT_RULE}
        if spec.verify is not None:  # do the raw files match torchvision's published md5s?
            card["verified"] = spec.verify(root)
        if spec.source is not None:  # images referenced in the user's folder, not copied
            card["source"] = spec.source(root)
        if spec.unlabeled is not None:  # extra images for pretraining (STL-10)
            card["unlabeled"] = {"size": len(spec.unlabeled(root))}

    try:
        fetch_atomically(data_dir, cfg.name, mirror, finish)
    except (DataUnavailableError, ValueError, PermissionError):
        raise  # already one line that says what to do
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt raw file, whatever the reader raised
        raise DataUnavailableError(
            f"cannot read {cfg.name} from {mirror or 'its download'} ({type(exc).__name__}: {str(exc)[:200]}); "
            "a raw file is truncated or corrupt: replace it (or point data.mirrors at good copies)") from None
    return card


def card_markdown(card: dict[str, Any]) -> str:
    """A human-readable dataset card."""
    tr, te = card["splits"]["train"], card["splits"]["test"]
    lines = [f"# Dataset card: {card['dataset']}", "",
             f"Image shape (c, h, w): {tuple(card['image_shape'])}. "
             f"Train {tr['size']}, test {te['size']}"
             + (f", unlabeled {card['unlabeled']['size']} (pretraining only)." if "unlabeled" in card else "."), ""]
    if "source" in card:
        lines += [f"Images are referenced from `{card['source']}` (decoded on demand, not copied); "
                  "the shape is the evaluation view (resize 256, centre crop 224).", ""]
    lines += ["| class | train | test | " + " | ".join(card["subsets"]) + " |",
              "|---|---|---|" + "---|" * len(card["subsets"])]
    for c in tr["per_class"]:
        subs = " | ".join(str(s["per_class"].get(c, 0)) for s in card["subsets"].values())
        lines.append(f"| {c} | {tr['per_class'][c]} | {te['per_class'].get(c, 0)} | {subs} |")
    seeded = all("seed" in s for s in card["subsets"].values())
    lines += ["", "Label subsets (class-balanced, seeded):" if seeded else "Label subsets (published lists):", ""]
    lines += [f"- `{n}`: {s['size']} images, {_subset_origin(s)}, md5 `{s['md5']}`" for n, s in card["subsets"].items()]
    if "class_split" in card:
        cs = card["class_split"]
        lines += ["", f"Class-disjoint split (metric learning, {cs['rule']}): train on classes "
                  f"{', '.join(map(str, cs['train']))}; recall@k on the test images of classes "
                  f"{', '.join(map(str, cs['retrieval']))}."]
    if "verified" in card:
        match = "match" if card["verified"] else "do NOT match (not the official release)"
        lines += ["", f"Raw files (md5; they {match} torchvision's published checksums):", ""]
    elif "source" in card:
        lines += ["", "Index files (md5):", ""]
    else:
        lines += ["", "Raw files (decompressed idx, md5):", ""]
    lines += [f"- `{f}`: `{h}`" for f, h in card["raw_md5"].items()]
    return "\n".join(lines) + "\n"


def _subset_origin(subset: dict[str, Any]) -> str:
    """How a label subset was made: its seed, or the list it comes from."""
    if "seed" in subset:
        return f"seed {subset['seed']}"
    match = "the published list" if subset["published"] else "NOT the published list"
    return f"from `{subset['list']}` ({match}, sha256 `{subset['list_sha256']}`)"
