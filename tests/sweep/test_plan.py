"""The sweep plan: every ablation's runs, deduplicated, and the Hydra multiruns that train them."""

from __future__ import annotations

from embreg.params import LocalParams, PipelineParams
from embreg.sweep.launch import multirun_commands
from embreg.sweep.plan import Job, make_plan, pending


def _params(**kw) -> PipelineParams:
    return PipelineParams(**{"profile": "default", "data_dir": "data",
                             "local": LocalParams(max_parallel=2, threads_per_job=1), **kw})


def test_plan_covers_every_ablation_once():
    plan = make_plan(_params())
    ids = plan.run_ids()
    arms = {ids[j] for j in plan.jobs}
    assert {"inv_only", "vicreg_nocov", "var_l2", "svmax", "vicreg", "vicreg_all", "svmax_all",
            "random_init", "supervised"} <= arms
    assert {"svmax@svmax=0.1", "svmax@svmax=10.0", "var_l2@variance=0.1", "vicreg@covariance=10.0"} <= arms
    # shared by A and B (and inv_only by A and B): listed once per seed
    assert sum(1 for j in plan.jobs if j.arm == "vicreg_nocov") == 3
    # main arms and references: three seeds; sensitivity points: the profile's sweep seeds
    assert {j.seed for j in plan.jobs if j.sweep_key is None} == {0, 1, 2}
    assert {"pixels", "random_init", "supervised"} <= {j.arm for j in plan.jobs}
    sweep_jobs = [j for j in plan.jobs if j.sweep_key]
    points = {(sw["arm"], sw["key"], v) for abl in plan.ablations.values() for sw in abl.sweeps for v in sw["values"]}
    assert {j.seed for j in sweep_jobs} == {0} and len(sweep_jobs) == len(points)  # each point once, one seed


def test_sensitivity_points_never_fine_tune():
    plan = make_plan(_params(overrides=["eval.semi_supervised=true"]))
    assert all(plan.configs[j].eval.semi_supervised is False for j in plan.jobs if j.sweep_key)
    assert all(plan.configs[j].eval.semi_supervised for j in plan.jobs if j.sweep_key is None)


def test_extra_overrides_reach_every_run():
    plan = make_plan(_params(overrides=["pretrain.epochs=3"]))
    assert {c.pretrain.epochs for c in plan.configs.values()} == {3}


def test_multiruns_group_by_swept_key():
    params = _params()
    plan = make_plan(params)
    cmds = multirun_commands(plan, plan.jobs, params)
    # main arms, and one per swept (arm, key): var_l2, svmax, vicreg's covariance, barlow's lambda, two layer weights
    swept = {(sw["arm"], sw["key"]) for abl in plan.ablations.values() for sw in abl.sweeps}
    assert len(cmds) == 1 + len(swept)
    main = next(c for c in cmds if not any(a.startswith("tag_keys") for a in c))
    assert "--multirun" in main and "hydra/launcher=local" in main
    assert "hydra.sweeper.max_batch_size=2" in main and "runtime.threads=1" in main
    assert "seed=0,1,2" in main
    objectives = next(a for a in main if a.startswith("objective=")).split("=")[1].split(",")
    arms = {a for abl in plan.ablations.values() for a in [*abl.arms, *abl.baselines]}
    assert len(objectives) == len(set(objectives)) and set(objectives) == arms  # every arm and reference once
    svmax = next(c for c in cmds if "tag_keys=[objective.terms.svmax]" in c)
    assert "objective.terms.svmax=0.1,10.0" in svmax and "seed=0" in svmax
    assert "eval.semi_supervised=false" in svmax


def test_nothing_pending_once_every_run_finished(smoke_cfg):
    from embreg.run import run_one

    cfg = smoke_cfg("objective=random_init")
    job = Job("random_init", 0)
    plan = make_plan(PipelineParams(profile="smoke", data_dir=cfg.paths.data, overrides=[
        f"paths.results={cfg.paths.results}", f"paths.checkpoints={cfg.paths.checkpoints}",
        "runtime.progress=false"]), ablations=["layers"])
    assert job in pending(plan)
    run_one(plan.configs[job])
    assert job not in pending(plan) and len(pending(plan)) == len(plan.jobs) - 1


def test_the_robustness_profile_runs_its_own_studies_scaled_to_the_profile():
    """profile.ablations picks the studies; the learning-rate points are multiples of the
    profile's own rate (${times:...}); the batch-size points keep steps x batch equal (paired)."""
    plan = make_plan(_params(profile="robustness"))
    assert list(plan.ablations) == ["lr_robustness", "batch_size"]
    ids = plan.run_ids()
    base_lr = make_plan(_params()).configs[Job("svmax", 0)].optim.lr
    lrs = sorted({plan.configs[j].optim.lr for j in plan.jobs if j.arm == "svmax" and j.sweep_key == "optim.lr"})
    assert lrs == [3 * base_lr, 10 * base_lr, 30 * base_lr]
    assert f"svmax@lr={3 * base_lr}" in set(ids.values())
    batch = {(plan.configs[j].optim.batch_size, plan.configs[j].pretrain.steps_per_epoch)
             for j in plan.jobs if j.arm == "svmax" and j.sweep_key == "optim.batch_size"}
    assert batch == {(32, 30), (128, 8), (512, 2)}  # 64 x 15 images per epoch, rounded
    assert {tuple(plan.configs[j].backbone.projector) for j in plan.jobs if j.sweep_key == "optim.batch_size"} == {
        (1024, 1024, 128)}
    # the default profile's sweep is untouched by the studies
    assert not {"lr_robustness", "batch_size"} & set(make_plan(_params()).ablations)


def test_a_paired_key_must_give_one_value_per_point():
    import pytest

    from embreg.config import AblationConfig

    with pytest.raises(ValueError, match="pairs pretrain.steps_per_epoch with 1 values for its 2 points"):
        AblationConfig(name="x", sweeps=[{"arm": "svmax", "key": "optim.batch_size", "values": [32, 64],
                                          "paired": {"pretrain.steps_per_epoch": [10]}}])


def test_equal_images_keeps_an_epoch_based_profile_epoch_based():
    from embreg.params import _equal_images

    assert _equal_images(None, 256, 1024) is None
    assert _equal_images(15, 64, 512) == 2 and _equal_images(15, 64, 4096) == 1


def test_the_manifest_keeps_the_profiles_order_of_the_ablations(tmp_path):
    """manifest.json's keys are sorted; the analysis reads the ablations back in the profile's
    order (its reports, the headline figure, the README's status table)."""
    from embreg.analysis.aggregate import load_manifest
    from embreg.sweep.plan import write_manifest

    plan = make_plan(_params())
    order = list(plan.ablations)
    assert order != sorted(order)  # the default's order is not alphabetical: the test can fail
    write_manifest(plan, tmp_path)
    assert list(load_manifest(tmp_path)["ablations"]) == order
