"""params.yaml + params.local.yaml through the one typed loader."""

from __future__ import annotations

import pytest
import yaml

from embreg.params import REPO_ROOT, LocalParams, SlurmParams, load_params


def test_the_repository_params_load_with_the_launcher_defaults():
    p = load_params(REPO_ROOT / "params.yaml", site=REPO_ROOT / "no-such-site-file.yaml")
    assert p.launcher == "local" and p.data_dir == "data"
    assert p.dataset == "fashion_mnist" and p.mirror("fashion_mnist") == "/usr/share/datasets/fashion-mnist"
    assert p.mirror("cifar10") is None
    assert p.local == LocalParams() and p.slurm == SlurmParams()


def test_site_file_overrides_the_launcher_sections_key_by_key(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"profile": "smoke", "launcher": "local", "slurm": {"partition": "gpu", "mem_gb": 8}}))
    (tmp_path / "params.local.yaml").write_text(yaml.safe_dump(
        {"launcher": "slurm", "slurm": {"account": "lab", "mem_gb": 16}, "local": {"max_parallel": 0}}))
    p = load_params(tmp_path / "params.yaml")
    assert p.profile == "smoke" and p.launcher == "slurm"
    assert (p.slurm.partition, p.slurm.account, p.slurm.mem_gb, p.slurm.timeout_min) == ("gpu", "lab", 16, 60)
    assert p.local.max_parallel == 0 and p.local.threads_per_job == 1


def test_unknown_launcher_key_fails_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"slurm": {"partiton": "gpu"}}))
    with pytest.raises(ValueError, match="slurm: unknown key 'partiton' \\(did you mean 'partition'\\?\\); valid: .*partition") as err:
        load_params(tmp_path / "params.yaml")
    assert "\n" not in str(err.value)
