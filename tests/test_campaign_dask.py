"""Campaigns on Dask: a real ``distributed.LocalCluster`` (one worker process) runs a 3-replica
campaign; its worker is killed (SIGKILL) once the first replica file exists; the campaign is then
run again (as a user re-runs ``lartpc-bayes validate run ... --executor dask``) and must end with
all three replicas, the first one untouched (same file, same mtime): no finished replica is lost
or recomputed.

The campaign is the cheapest real one: one muon, E free (the other five fixed at nominal), 99
Laplace draws.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")

from lartpc_bayes.validation.campaign import (  # noqa: E402
    CampaignConfig,
    load_records,
    replica_path,
    run_campaign,
)


@pytest.mark.slow
def test_dask_campaign_survives_a_killed_worker(tmp_path):
    cfg = CampaignConfig("dask_kill", free=("E",), n_replicas=3, num_draws=99, importance=False)
    out = tmp_path / "c"
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    killed = {}

    def killer():
        t0 = time.time()
        while time.time() - t0 < 1200:
            if replica_path(out, 0).exists():
                pid = next(iter(client.run(os.getpid).values()))
                killed["mtime"] = replica_path(out, 0).stat().st_mtime_ns
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.5)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        try:
            run_campaign(cfg, out, executor=client, progress=False)
        except Exception as e:  # KilledWorker once the retries are spent: resume below
            killed["error"] = type(e).__name__
        th.join(timeout=60)
        assert "pid" in killed, "the worker was never killed"
        run_campaign(cfg, out, executor=client, progress=False)
    finally:
        client.close()
        cluster.close()
    recs = load_records(out)
    assert sorted(r["index"] for r in recs) == [0, 1, 2]
    assert replica_path(out, 0).stat().st_mtime_ns == killed["mtime"]
