"""plait's implementations of the benchmark workloads, as task modules.

A supervisor serving the benchmark imports every module in :data:`MODULES`
(``--import bench.workloads.chain ...``); ``bench/peers/plait_peer.py`` drives
them. Task names carry the workload's prefix so that they cannot collide with
the examples' tasks when both are served together.
"""

MODULES = (
    "bench.workloads.chain",
    "bench.workloads.map_reduce",
    "bench.workloads.fanout",
    "bench.workloads.steps",
    "bench.workloads.cold",
)
