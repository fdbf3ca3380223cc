"""Seeded deterministic simulation of the Totem core, and the EVS checker.

- :mod:`ringd.sim.network`: SimNetwork (delays, loss, duplication, reordering, partitions).
- :mod:`ringd.sim.options`: SimOptions (what a run does), SimStats (what it counted).
- :mod:`ringd.sim.cluster`: SimCluster(seed, n, SimOptions) drives n cores on a virtual clock.
- :mod:`ringd.sim.trace`: trace entries and their formatting.
- :mod:`ringd.sim.checkers`: check_safety / check_liveness over per-process logs.
- :mod:`ringd.sim.runner`: run_seed, sweep (worker processes), repro_command, trace_window.
- :mod:`ringd.sim.command`: ``simulate`` (the ``ringd simulate`` command).

Synchronous and trio-free; one seed reproduces a run exactly.
"""
