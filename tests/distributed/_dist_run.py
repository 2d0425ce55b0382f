"""A whole extraction run for the crash tests: ``python _dist_run.py STORE MODE [SLOW_S]``.

MODE ``local:N`` runs on a fresh LocalCluster of N processes (client, scheduler and
workers all die with a SIGKILL of this process group); ``inprocess`` runs without Dask.
Storage options come from $LOSA_CACHE_STORAGE_OPTIONS. Shard writes sleep SLOW_S.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dist_helpers import CFG, SlowWrites

from losa_cache.extract import ExtractConfig, extract


def main(store: str, mode: str, slow: float) -> None:
    cfg = ExtractConfig(store=store, **CFG)
    if mode == "inprocess":
        plugin = SlowWrites(slow)
        plugin.setup(None)
        extract(cfg, progress=False)
        return
    from distributed import Client, LocalCluster

    from losa_cache.distributed import extract_distributed

    n = int(mode.removeprefix("local:"))
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            dashboard_address=None,
            host="127.0.0.1",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(SlowWrites(slow))
        extract_distributed(cfg, client=client, progress=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
