"""Benchmark the whole segment job at scale, with a baseline run in the same process.

The job is what ``notebooks/10_segment_lists`` and ``20_send_plan`` run,
straight from a folder of Parquet files (DuckDB reads them in place; nothing is
loaded into pandas before the per-customer table):

==============  ==================================================================
step            what
==============  ==================================================================
open            ``open_store(folder)``: Parquet files as DuckDB views
validate        ``validate(store, as_of)``: the contract checks notebook 10 runs first
customers       customers signed up by as_of (per-customer table starts)
rfm + clv       ``rfm.summarize`` in DuckDB, R/F/M scores and segments, BG/NBD and
                Gamma-Gamma fits (on a 200k sample), P(alive), CLV for everyone
engagement      machine opens, engagement states, send hour, affinities (DuckDB)
churn + prop.   features at as_of - H in DuckDB, churn and purchase models trained
                on a 200k stratified sample, everyone scored at as_of
triggers        the eight behavioral triggers with cooldowns
segments        default rule set on the score table
publish seg.    segment lists (CSV, sha256 manifest), atomically
hand-over       notebook 10 saves the scores and the assignment (Parquet), notebook 20
                reads them back
recommend       item-to-item similarity and 3 products per customer
plan            suppression, caps, holdouts, variants, send times
publish plan    send lists, holdouts and exclusions (CSV, sha256 manifest), atomically
preview         the HTML preview of each campaign's emails (notebook 20's last step)
==============  ==================================================================

The baseline, in the same process on the same orders: plain ``lifetimes``
for the part it covers (summary, BG/NBD fit, Gamma-Gamma fit, CLV), as
``bench_scoring.py`` does step by step. Peak RSS is the process's resident
memory at its highest during the step (sampled every 5 ms); CPU s is the
process's CPU time in the step (every thread), and cores that over the wall
time (2.0 would keep both cores of the benchmark machine busy); kernel s is the
part of the CPU time spent in the kernel, nearly all of it page faults of fresh
memory (on a VM that hands free memory back to its host, a fault can cost 30x
what it costs on a quiet one, and kernel s shows when a run was hit).

Usage::

    .venv/bin/python benchmarks/bench_job.py                     # 1,000,000 customers
    .venv/bin/python benchmarks/bench_job.py --customers 10000000 --no-baseline
    .venv/bin/python benchmarks/bench_job.py --customers 20000   # a quick look

The simulated store is cached under ``benchmarks/results/store_<N>_<seed>/``.
"""

from __future__ import annotations

import argparse
import logging
import os

# OpenMP threads of the gradient boosting spin while waiting by default; next to
# the RSS sampler thread on 2 cores that costs 10x. Wait passively instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import Timing, _PeakRSS, _rss_bytes, _timed  # noqa: E402

import bmkt  # noqa: E402
from bmkt.io import open_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
AS_OF = "2024-06-30"


#: Simulator settings giving the issue's shape: at 1M customers ~11M orders
#: (more frequent buyers, less dropout than the defaults) and ~50M email events.
TARGET_SHAPE = {"alpha": 8.0, "b": 10.0}
TARGET_CAMPAIGNS_PER_WEEK = 0.8
#: Above this many customers the store is simulated and written in blocks.
BLOCK = 1_000_000


def _store(
    n: int, seed: int, days: int, campaigns_per_week: float, sim: dict[str, float] | None = None
) -> Path:
    from bmkt.simulate import simulate_store, write_store

    sim = dict(TARGET_SHAPE if sim is None else sim)
    tag = "_".join(f"{k}{v:g}" for k, v in sorted(sim.items()))
    folder = RESULTS / f"store_{n}_{seed}_{days}_{campaigns_per_week:g}{'_' + tag if tag else ''}"
    if n > BLOCK and not (folder / "orders").is_dir():  # larger than memory: in blocks
        from bmkt.simulate import simulate_to_folder

        t0 = time.perf_counter()
        simulate_to_folder(
            folder,
            n,
            block_size=BLOCK,
            days=days,
            seed=seed,
            end=AS_OF,
            campaigns_per_week=campaigns_per_week,
            **sim,
        )
        print(f"simulated {n:,} customers in {time.perf_counter() - t0:.0f} s -> {folder}")
    elif n <= BLOCK and not (folder / "orders.parquet").exists():
        t0 = time.perf_counter()
        tables = simulate_store(
            n_customers=n,
            days=days,
            seed=seed,
            end=AS_OF,
            campaigns_per_week=campaigns_per_week,
            **sim,
        )
        write_store(tables, folder)
        del tables
        print(f"simulated {n:,} customers in {time.perf_counter() - t0:.0f} s -> {folder}")
    return folder


def _numpy_hugepages() -> str:
    """Whether numpy asks for transparent huge pages now (after ``import bmkt``)."""
    from numpy._core import multiarray

    getter = getattr(multiarray, "_get_madvise_hugepage", None)  # private: may go away
    return "unknown" if getter is None else ("on" if getter() else "off")


class _Steps(dict):
    """Step timings, each also printed to stderr when measured (a long run shows its progress)."""

    def __setitem__(self, name: str, t: Timing) -> None:
        super().__setitem__(name, t)
        rss = _rss_bytes() / 2**20
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: {t.seconds or 0:.1f} s, "
            f"peak {t.peak_mib or 0:,.0f} MiB (now {rss:,.0f} MiB)"
            + (f", CPU {t.cpu_seconds:.1f} s" if t.cpu_seconds else "")
            + (f" (kernel {t.sys_seconds:.1f} s)" if t.sys_seconds is not None else "")
            + f" {t.note}",
            file=sys.stderr,
            flush=True,
        )


class _RSSTrace(_PeakRSS):
    """RSS samples with their times, for the peaks of the steps inside one call."""

    def _run(self) -> None:
        self.samples: list[tuple[float, int, float, float]] = []
        while not self._stop.is_set():
            rss = _rss_bytes()
            self.samples.append((time.perf_counter(), rss, time.process_time(), os.times().system))
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def peak_between(self, start: float, end: float) -> float:
        inside = [rss for t, rss, *_ in self.samples if start <= t <= end]
        return float(max(inside)) if inside else float(self.peak)

    def cpu_between(self, start: float, end: float) -> float | None:
        """Process CPU seconds from the sample nearest ``start`` to the one nearest ``end``."""
        inside = [cpu for t, _, cpu, _ in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else None

    def sys_between(self, start: float, end: float) -> float | None:
        """The kernel's part of :meth:`cpu_between`."""
        inside = [k for t, _, _, k in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else None


def _strict(fn: Any) -> tuple[Any, Timing]:
    """:func:`_timed`, but a bmkt step that fails stops the benchmark with its error.

    (``_timed`` notes a failure and goes on, which suits the baseline: lifetimes
    may not converge.)
    """
    failed: list[BaseException] = []

    def run() -> Any:
        try:
            return fn()
        except Exception as exc:
            failed.append(exc)
            raise

    out, timing = _timed(run)
    if failed:
        raise failed[0]
    return out, timing


def _job(folder: Path, out: Path) -> tuple[dict[str, Timing], dict[str, int]]:
    import pandas as pd

    from bmkt.plan import build_plan, load_campaigns, render_preview
    from bmkt.publish import publish_plan, publish_segments
    from bmkt.recommend import ItemSimilarity
    from bmkt.scoring import Scores, score_customers
    from bmkt.segments import RuleSet
    from bmkt.validate import validate

    times = _Steps()
    store, times["open"] = _strict(lambda: open_store(folder))
    _, times["validate"] = _strict(lambda: validate(store, as_of=AS_OF).raise_if_failed())
    with _RSSTrace() as trace:
        start = time.perf_counter()
        scores = score_customers(store, AS_OF, churn=True)
    at = start  # score_customers times its own steps, back to back
    for name, seconds in scores.timings.items():
        times[name] = Timing(
            seconds,
            trace.peak_between(at, at + seconds) / 2**20,
            cpu_seconds=trace.cpu_between(at, at + seconds),
            sys_seconds=trace.sys_between(at, at + seconds),
        )
        at += seconds
    assignment, times["segments"] = _strict(lambda: RuleSet.default().assign(scores.table))
    _, times["publish segments"] = _strict(
        lambda: publish_segments(assignment, scores.table, out, "bench", AS_OF)
    )

    def hand_over() -> tuple[Scores, Any]:
        # notebook 10 saves what notebook 20 reads (another process in a pipeline run,
        # where the first one's memory is gone by then: here both are held meanwhile)
        scores.save(out / "run")
        assignment.to_parquet(out / "run" / "assignment.parquet")
        return Scores.load(out / "run"), pd.read_parquet(out / "run" / "assignment.parquet")

    (scores, assignment), times["hand-over"] = _strict(hand_over)

    def recommend() -> Any:
        model = ItemSimilarity().fit(store, AS_OF)
        return model.recommend(scores.table.index, n=3)

    recs, times["recommend"] = _strict(recommend)
    plan, times["plan"] = _strict(
        lambda: build_plan(
            store,
            assignment,
            scores.triggers,
            load_campaigns(None),
            AS_OF,
            features=scores.table,
            recommendations=recs,
        )
    )

    recs = None  # in the send lists now; the recommendations frame is not published

    _, times["publish plan"] = _strict(lambda: publish_plan(plan, out, "bench", AS_OF))
    _, times["preview"] = _strict(
        lambda: render_preview(plan, load_campaigns(None), out / "run" / "preview.html")
    )
    counts = {
        "customers": len(scores.table),
        "sends": len(plan.sends),
        "holdouts": len(plan.holdouts),
    }
    return times, counts


def _baseline(folder: Path) -> dict[str, Timing]:
    """Plain lifetimes on the same orders (summary + BG/NBD + Gamma-Gamma + CLV)."""
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import summary_data_from_transaction_data

    path = folder / "orders.parquet"
    orders = pd.read_parquet(
        path if path.exists() else folder / "orders",
        columns=["customer_id", "ordered_at", "revenue"],
    )
    orders = orders[orders.ordered_at < pd.Timestamp(AS_OF) + pd.Timedelta(days=1)]
    times: dict[str, Timing] = {}
    summary, times["lifetimes summary"] = _timed(
        lambda: summary_data_from_transaction_data(
            orders,
            "customer_id",
            "ordered_at",
            monetary_value_col="revenue",
            observation_period_end=pd.Timestamp(AS_OF) + pd.Timedelta(days=1, seconds=-1),
            freq="D",
        )
    )
    bg, times["lifetimes BG/NBD fit"] = _timed(
        lambda: BetaGeoFitter().fit(summary["frequency"], summary["recency"], summary["T"])
    )
    rep = summary[(summary.frequency > 0) & (summary.monetary_value > 0)]
    gg, times["lifetimes Gamma-Gamma fit"] = _timed(
        lambda: GammaGammaFitter().fit(rep.frequency, rep.monetary_value)
    )
    if gg is not None and bg is not None:
        _, times["lifetimes CLV"] = _timed(
            lambda: gg.customer_lifetime_value(
                bg,
                summary["frequency"],
                summary["recency"],
                summary["T"],  # not summary.T: that is the transpose
                summary["monetary_value"],
                time=12,
                discount_rate=0.01,
                freq="D",
            )
        )
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--campaigns-per-week", type=float, default=TARGET_CAMPAIGNS_PER_WEEK)
    parser.add_argument(
        "--sim",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="simulator parameter (repeatable); default: the issue's shape "
        f"{TARGET_SHAPE} (any --sim replaces it); '--sim none' for the simulator's "
        "defaults; '--sim alpha=8 --sim b=10 --sim web=0' for that shape without web events",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip plain lifetimes")
    parser.add_argument("--verbose", action="store_true", help="log bmkt's steps (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.verbose:
        logging.getLogger("bmkt").setLevel(logging.INFO)
    warnings.simplefilter("ignore")

    if args.sim is None:
        sim = None
    elif args.sim == ["none"]:
        sim = {}
    else:
        sim = {k: float(v) for k, _, v in (item.partition("=") for item in args.sim)}
    folder = _store(args.customers, args.seed, args.days, args.campaigns_per_week, sim)
    out = Path(tempfile.mkdtemp(prefix="bmkt-bench-"))
    try:
        with _PeakRSS() as total_mem:
            t0, c0, k0 = time.perf_counter(), time.process_time(), os.times().system
            times, counts = _job(folder, out)
            total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
            total_sys = os.times().system - k0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    base = {} if args.no_baseline else _baseline(folder)

    value_steps = ("rfm + clv",)
    bmkt_value = sum(times[s].seconds or 0 for s in value_steps if s in times)
    base_value = sum(t.seconds or 0 for t in base.values() if not t.note)

    print(
        f"\nbmkt {bmkt.__version__} whole segment job, {counts['customers']:,} customers, "
        f"{counts['sends']:,} sends, {counts['holdouts']:,} holdouts; "
        f"{platform.python_version()}, {platform.machine()}, "
        f"numpy huge pages {_numpy_hugepages()}, "
        f"BMKT_KEEP_FREED_MEMORY={os.environ.get('BMKT_KEEP_FREED_MEMORY', '0 (default)')}"
    )
    print(
        f"{'step':<28}{'bmkt s':>10}{'baseline s':>12}{'ratio':>8}{'peak MiB':>10}"
        f"{'CPU s':>9}{'cores':>7}{'kernel s':>10}"
    )
    for name, t in times.items():
        cpu = f"{t.cpu_seconds:>9.1f}{t.cpu_seconds / t.seconds:>7.2f}" if t.cpu_seconds else ""
        kernel = f"{t.sys_seconds:>10.1f}" if t.cpu_seconds and t.sys_seconds is not None else ""
        print(f"{name:<28}{t.seconds:>10.2f}{'':>12}{'':>8}{t.peak_mib:>10,.0f}{cpu}{kernel}")
    print(
        f"{'TOTAL job':<28}{total:>10.2f}{'':>12}{'':>8}{total_mem.peak / 2**20:>10,.0f}"
        f"{total_cpu:>9.1f}{total_cpu / total:>7.2f}{total_sys:>10.1f}"
    )
    for name, t in base.items():
        secs = f"{t.seconds:.2f}" if t.seconds is not None else "-"
        print(f"{name:<28}{'':>10}{secs:>12}{'':>8}{t.peak_mib or 0:>10,.0f}  {t.note}")
    if base:
        ratio = base_value / bmkt_value if bmkt_value else float("nan")
        print(
            f"{'summary + CLV (value part)':<28}{bmkt_value:>10.2f}{base_value:>12.2f}"
            f"{ratio:>7.1f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
