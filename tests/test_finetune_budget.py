"""The fine-tuning budget script's pure helpers: CI, doubling criterion, budget parsing."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "finetune_budget.py"


@pytest.fixture(scope="module")
def fb():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling _common
    spec = importlib.util.spec_from_file_location("finetune_budget", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cell_stats_matches_scipy_t_interval(fb):
    values = [70.1, 64.0, 77.7]
    got = fb.cell_stats(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 3, scale=stats.sem(values))
    assert got["n"] == 3
    assert got["mean"] == pytest.approx(70.6)
    assert got["ci_half_width"] == pytest.approx((hi - lo) / 2)
    # by hand: t(0.975, 2) = 4.3027, std 6.8636 -> 4.3027 * 6.8636 / sqrt(3) = 17.05
    assert got["ci_half_width"] == pytest.approx(17.05, abs=0.01)
    one = fb.cell_stats([50.0])
    assert one["n"] == 1 and math.isnan(one["ci_half_width"])


def test_doubling_criterion_on_known_numbers(fb):
    cells = {
        2.0: {"mean": 74.5, "ci_half_width": 1.7, "n": 3},
        4.0: {"mean": 77.0, "ci_half_width": 1.2, "n": 3},   # moved 2.5 > 1.7: 2 epochs too short
        8.0: {"mean": 77.8, "ci_half_width": 1.0, "n": 3},   # moved 0.8 < 1.2: 4 epochs is enough
        16.0: {"mean": 78.0, "ci_half_width": math.nan, "n": 3},
        20.0: {"mean": 60.0, "ci_half_width": 9.0, "n": 3},  # no 40: no doubling from 20
    }
    moves = fb.doubling_moves(cells)
    assert [(m["from"], m["to"]) for m in moves] == [(2.0, 4.0), (4.0, 8.0), (8.0, 16.0)]
    assert [m["move"] for m in moves] == pytest.approx([2.5, 0.8, 0.2])
    # 8 -> 16 moved 0.2 < 1.0; a nan half-width at the larger budget does not matter
    assert [m["stable"] for m in moves] == [False, True, True]
    assert fb.recommend(moves) == 4.0
    assert fb.recommend(moves[:1]) is None
    # a move down counts by its size too
    down = fb.doubling_moves({1.0: {"mean": 50.0, "ci_half_width": 2.0, "n": 3},
                              2.0: {"mean": 47.0, "ci_half_width": 2.0, "n": 3}})
    assert down[0]["move"] == pytest.approx(-3.0) and not down[0]["stable"]
    # a small move inside a wide n = 2 interval is not evidence of stability
    few = fb.doubling_moves({4.0: {"mean": 77.6, "ci_half_width": 4.1, "n": 2},
                             8.0: {"mean": 79.4, "ci_half_width": math.nan, "n": 1}})
    assert few[0]["n"] == [2, 1] and not few[0]["stable"]
    assert fb.doubling_moves({4.0: {"mean": 77.6, "ci_half_width": 4.1, "n": 2},
                              8.0: {"mean": 79.4, "ci_half_width": 4.0, "n": 2}}, min_n=2)[0]["stable"]


def test_summarize_groups_jobs_and_recommends(fb):
    jobs = [{"subset": "train_10pct", "epochs": ep, "seed": s, "steps": int(ep * 23), "top1": top1, "seconds": 10.0}
            for ep, tops in ((2.0, [70.0, 72.0, 74.0]), (4.0, [72.5, 73.0, 73.5]))
            for s, top1 in enumerate(tops)]
    out = fb.summarize(jobs)["train_10pct"]
    assert set(out["cells"]) == {"2", "4"}
    assert out["cells"]["2"]["mean"] == pytest.approx(72.0)
    assert out["cells"]["2"]["ci_half_width"] == pytest.approx(stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3))
    assert out["doublings"][0]["move"] == pytest.approx(1.0) and out["doublings"][0]["stable"]
    assert out["recommended_epochs"] == 2.0


def test_parse_budgets(fb):
    assert fb.parse_budgets(["train_1pct=40,20"], ["train_1pct", "train_10pct"]) == {"train_1pct": [20.0, 40.0]}
    with pytest.raises(ValueError, match="valid: train_1pct, train_10pct"):
        fb.parse_budgets(["train_5pct=2"], ["train_1pct", "train_10pct"])
    with pytest.raises(ValueError, match="expected NAME=EPOCHS"):
        fb.parse_budgets(["train_1pct=a"], ["train_1pct"])
