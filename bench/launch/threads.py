"""Torch's CPU threads for the runs of this process: ``BENCH_THREADS=N`` (read by ``bench run`` and by SLURM tasks).

The count is never changed automatically. On the CPU the BLAS sums some products in an order that depends on the
thread count, so a trained run's numbers depend on it in their last bits (measured on the tests' tiny models: CoOp,
CSC CoOp, CoCoOp and KgCoOp training losses differ at about 1e-7 between 1 and 2 threads; the same count gives
bit-identical numbers). A store whose runs should be bit-reproducible is filled with one fixed count. Each
result records the count it ran with (``environment.torch_threads``); it is not part of a run's identity.

Several ``bench run`` processes sharing one machine's CPUs (the README's way to share a grid) should each get
``BENCH_THREADS`` = CPUs / processes: with torch's default, every process starts one thread per core and the
machine is oversubscribed (two processes on two cores: 5.4x slower than one, issue 25).
"""

from __future__ import annotations

import os

from bench.errors import BenchError

THREADS_ENV = "BENCH_THREADS"


def requested_threads() -> int | None:
    """``BENCH_THREADS`` as a count (None when unset or empty); a one-line BenchError when it is not one."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise BenchError(f"bad {THREADS_ENV}={value!r}: the number of torch CPU threads per bench process must be "
                         f"an integer >= 1 (unset: torch's default, one per core)")
    return n


def apply_threads() -> int:
    """Set torch's intra-op threads from ``BENCH_THREADS`` when given; returns the count in effect."""
    import torch

    n = requested_threads()
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def oversubscription_hint(threads: int, cpus: int, processes: int) -> str | None:
    """A one-line hint when ``processes`` bench processes with ``threads`` threads each outnumber ``cpus``, unless
    the count was chosen (``BENCH_THREADS`` set)."""
    if os.environ.get(THREADS_ENV, "").strip() or threads * processes <= cpus:
        return None
    share = max(1, cpus // processes)
    return (f"another bench process on this host works on this store: {processes} processes x {threads} torch "
            f"threads on {cpus} CPU(s) oversubscribe them (much slower); start each with {THREADS_ENV}={share} "
            f"(a fixed count: numbers of trained runs depend on it in their last bits)")
