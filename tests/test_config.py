"""Every conf file composes into the typed schema; bad names and values fail in one line."""

from __future__ import annotations

import pytest

from embreg.config import AblationConfig, ObjectiveConfig
from embreg.fingerprint import run_fingerprint
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
    for sweep in abl.sweeps:
        assert sweep["arm"] in objectives and len(sweep["values"]) >= 1
        compose_run("default", [f"objective={sweep['arm']}", f"{sweep['key']}={sweep['values'][0]}"])
    if abl.study:  # a robustness study: every point of its curves has the profile's seeds, for CIs
        assert abl.sweep_seeds == cfg.profile.seeds and not abl.comparisons
    else:
        assert abl.sweep_seeds == cfg.profile.sweep_seeds
        assert {sw["arm"] for sw in abl.sweeps} <= set(abl.arms)
        assert abl.comparisons, "every ablation names the differences its table tests"


@pytest.mark.parametrize("ablation", group_options("ablation"))
def test_comparison_names_are_the_launched_run_ids(ablation):
    """Each comparison names a run the sweep trains, spelled as embreg.rundir.run_id spells it."""
    from embreg.rundir import run_id
    from embreg.sweep.plan import ablation_jobs

    abl = compose_run("default", [f"ablation={ablation}"]).ablation
    ids = {run_id(compose_run("default", job.overrides())) for job in ablation_jobs(abl)}
    assert set(abl.run_ids()) == ids
    assert {run for pair in abl.comparisons for run in pair} <= ids


def test_layers_ablation_sweeps_the_stage_weight():
    abl = compose_run("default", ["ablation=layers"]).ablation
    assert ["svmax_all@layer_weight=0.2", "svmax"] in abl.comparisons
    assert ["vicreg_all@layer_weight=0.2", "vicreg"] in abl.comparisons
    assert compose_run("default", ["objective=svmax_all"]).objective.layer_weight == 1.0


@pytest.mark.parametrize(
    ("comparisons", "match"),
    [([["svmax", "vicreg_all"]], "unknown ablation c comparison run 'vicreg_all'; valid: svmax, random_init, "
      "svmax@svmax=0.1"),
     ([["svmax@svmax=0.5", "svmax"]], "'svmax@svmax=0.5'"),
     ([["svmax"]], r"each comparison is \[arm, reference\]")],
)
def test_bad_comparisons_fail_in_one_line(comparisons, match):
    with pytest.raises(ValueError, match=match) as err:
        AblationConfig(name="c", arms=["svmax"], baselines=["random_init"], comparisons=comparisons,
                       sweeps=[{"arm": "svmax", "key": "objective.terms.svmax", "values": [0.1]}])
    assert "\n" not in str(err.value)


def test_int_sweep_values_match_float_run_ids():
    abl = AblationConfig(arms=["svmax"], sweeps=[{"arm": "svmax", "key": "objective.terms.svmax", "values": [10]}],
                         comparisons=[["svmax@svmax=10.0", "svmax"]])
    assert abl.run_ids()[-1] == "svmax@svmax=10.0"


def test_bad_comparison_in_an_ablation_file_fails_on_compose():
    with pytest.raises(ValueError, match="unknown ablation layers comparison run 'nope'"):
        compose_run("default", ["ablation=layers", "ablation.comparisons=[[nope,svmax]]"])


def test_shared_runs_have_identical_fingerprints():
    """ablation A's variance (raw) arm and B's no-covariance arm are one run."""
    a = compose_run("default", ["objective=vicreg_nocov", "ablation=anticollapse"])
    b = compose_run("default", ["objective=vicreg_nocov", "ablation=covariance", "paths.results=/elsewhere"])
    assert run_fingerprint(a) == run_fingerprint(b)
    c = compose_run("default", ["objective=vicreg"])
    assert run_fingerprint(c) != run_fingerprint(a)


@pytest.mark.parametrize("group,bad", [("profile", "huge"), ("objective", "no_such_arm"), ("ablation", "nope"),
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
    with pytest.raises(ValueError, match=r"objective\.terms\.covariance must be >= 0"):
        compose_run("smoke", ["objective.terms.covariance=-1"]).validate()


def test_unknown_term_options_list_valid_names():
    with pytest.raises(UnknownNameError, match="valid: raw, l2"):
        ObjectiveConfig(space="sphere").validate()
    with pytest.raises(ValueError, match="objective.params.svmax.form=log: must be one of score, neg_mean, exp"):
        validate(compose_run("smoke", ["objective=svmax", "objective.params.svmax.form=log"]))


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
