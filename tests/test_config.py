"""Every conf file composes into the typed schema; bad names and values fail in one line."""

from __future__ import annotations

import pytest

from embreg.config import ObjectiveConfig
from embreg.params import compose_run, group_options
from embreg.registry import UnknownNameError
from embreg.run import validate


@pytest.mark.parametrize("profile", group_options("profile"))
@pytest.mark.parametrize("objective", group_options("objective"))
def test_every_objective_composes_under_every_profile(profile, objective):
    cfg = compose_run(profile, [f"objective={objective}"])
    validate(cfg)
    assert cfg.arm == objective == cfg.objective.name
    assert cfg.profile.name == profile


@pytest.mark.parametrize("ablation", group_options("ablation"))
def test_every_ablation_names_existing_arms(ablation):
    cfg = compose_run("default", [f"ablation={ablation}"])
    abl = cfg.ablation
    assert abl is not None and abl.name == ablation and abl.title
    objectives = set(group_options("objective"))
    assert set(abl.arms) | set(abl.baselines) <= objectives
    assert abl.seeds == cfg.profile.seeds and len(abl.seeds) >= 2
    assert abl.sweep_seeds == cfg.profile.sweep_seeds
    for sweep in abl.sweeps:
        assert sweep["arm"] in abl.arms and len(sweep["values"]) >= 2
        compose_run("default", [f"objective={sweep['arm']}", f"{sweep['key']}={sweep['values'][0]}"])


def test_shared_runs_have_identical_fingerprints():
    """ablation A's variance (raw) arm and B's no-covariance arm are one run."""
    a = compose_run("default", ["objective=vicreg_nocov", "ablation=anticollapse"])
    b = compose_run("default", ["objective=vicreg_nocov", "ablation=covariance", "paths.results=/elsewhere"])
    assert a.fingerprint("x") == b.fingerprint("x")
    c = compose_run("default", ["objective=vicreg"])
    assert c.fingerprint("x") != a.fingerprint("x")


@pytest.mark.parametrize("group,bad", [("profile", "huge"), ("objective", "barlow"), ("ablation", "nope"),
                                       ("backbone", "vit")])
def test_unknown_names_list_the_valid_ones(group, bad):
    overrides = [] if group == "profile" else [f"{group}={bad}"]
    with pytest.raises(UnknownNameError) as err:
        compose_run(bad if group == "profile" else "smoke", overrides)
    msg = str(err.value)
    assert "\n" not in msg and bad in msg
    for valid in group_options(group):
        assert valid in msg


def test_negative_coefficient_is_rejected():
    with pytest.raises(ValueError, match=r"objective\.covariance must be >= 0"):
        compose_run("smoke", ["objective.covariance=-1"]).validate()


def test_unknown_term_options_list_valid_names():
    with pytest.raises(UnknownNameError, match="valid: raw, l2"):
        ObjectiveConfig(space="sphere").validate()
    with pytest.raises(UnknownNameError, match="valid: score, neg_mean, exp"):
        validate(compose_run("smoke", ["objective.svmax_form=log"]))


@pytest.mark.parametrize(("override", "valid"), [
    ("optim.name=rmsprop", "valid: adamw, lars, sgd"),
    ("backbone.stem=vit", "valid: imagenet, cifar"),
    ("dataset.name=mnist", "valid: cifar10, cifar100, fashion_mnist, imagenet, imagenet100, stl10"),
])
def test_names_the_components_own_are_checked_by_them(override, valid):
    """config.py lists none of these: each registry (optimizers, stems, datasets) answers."""
    cfg = compose_run("smoke", [override])
    cfg.validate()  # the schema's own checks do not know these names
    with pytest.raises(UnknownNameError, match=valid):
        validate(cfg)
