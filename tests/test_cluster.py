"""Tests for pipeline.cluster: joblib work on a real Dask LocalCluster (loopback), and searches that use it."""

import os

import joblib
import pytest
from distributed import Client, LocalCluster

from pipeline.classification.train import train_classifier
from pipeline.cluster import joblib_backend
from pipeline.config import ClassifierConfig
from pipeline.validation import ConfigError

pytestmark = pytest.mark.slow  # real Dask clusters


def worker_pids(n=4):
    return set(joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(n)))


def test_no_cluster_runs_joblib_locally():
    with joblib_backend(None):
        with joblib.parallel_config(backend="threading"):
            assert worker_pids() == {os.getpid()}


def test_local_cluster_runs_joblib_work_in_its_worker_processes():
    with joblib_backend("local:2"):
        pids = worker_pids(8)
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


@pytest.mark.parametrize("cluster", ["local:0", "local", "dask://x", "local:two"])
def test_a_bad_cluster_is_named_with_the_allowed_forms(cluster):
    with pytest.raises(ConfigError, match=r"cluster must be null, 'local:N' .* or a scheduler address 'tcp://host:port'"):
        with joblib_backend(cluster):
            pass


def test_search_runs_on_a_running_scheduler_and_matches_a_local_search(features_file, tmp_path):
    config = ClassifierConfig.from_params({"s": {
        "estimator": "logistic_regression", "params": {"max_iter": 300},
        "search": {"space": {"C": [0.01, 0.1, 1.0]}, "cv": 2, "n_jobs": -1},
    }}, "s", "conv_pw_5_relu")
    local = train_classifier(features_file, config, tmp_path / "local")["search"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1") as cluster:
        with Client(cluster) as client:
            remote = train_classifier(features_file, config, tmp_path / "remote", cluster=cluster.scheduler_address)["search"]
            prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert prefixes, "the scheduler ran no task"
    assert remote["best_params"] == local["best_params"] and remote["candidates"] == 3
    assert remote["best_score"] == pytest.approx(local["best_score"])
