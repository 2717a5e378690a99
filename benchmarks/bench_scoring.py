"""Benchmark customer-value scoring: bmkt against plain lifetimes, step by step.

Simulates a store (``bmkt.simulate.simulate_store``, BG/NBD purchases and
Gamma-Gamma spend, no email or web events), then times in one process:

==========  =============================================  ==========================================
step        bmkt                                           lifetimes
==========  =============================================  ==========================================
summary     ``rfm.summarize`` (DuckDB)                     ``summary_data_from_transaction_data``
bgnbd_fit   ``clv.BetaGeo().fit``                          ``BetaGeoFitter().fit``
gg_fit      ``clv.GammaGamma().fit``                       ``GammaGammaFitter().fit`` (repeat buyers)
clv         ``clv.clv`` (12 months, 1% a month)            ``GammaGammaFitter.customer_lifetime_value``
rfm         ``rfm.score`` + ``rfm.segment``                (none in lifetimes)
==========  =============================================  ==========================================

A lifetimes fit that raises ``ConvergenceError`` is reported as such; its
scoring step then runs with bmkt's parameters so it can still be timed. Peak
RSS is the process's resident memory at its highest during the step (sampled
every 5 ms), so it includes everything held from earlier steps. With
``--repeat N`` each step runs N times and the fastest run is reported (the
machine may be shared).

Usage::

    .venv/bin/python benchmarks/bench_scoring.py                  # 1,000,000 customers
    .venv/bin/python benchmarks/bench_scoring.py --customers 50000
    .venv/bin/python benchmarks/bench_scoring.py --sim alpha=8 --sim b=10   # ~10.6M orders
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("bench_scoring")

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class _PeakRSS:
    """Sample the process RSS in a thread while a step runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


@dataclass
class Timing:
    seconds: float | None = None
    peak_mib: float | None = None
    note: str = ""
    #: CPU time of the process (every thread) during the step.
    cpu_seconds: float | None = None
    #: The part of it spent in the kernel (mostly page faults of fresh memory).
    sys_seconds: float | None = None


REPEAT = 1


def _timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    """Run ``fn`` REPEAT times: its last result, the fastest time, the highest RSS."""
    best, peak, out, note, cpu, sys_s = float("inf"), 0, None, "", None, None
    for _ in range(REPEAT):
        out = None
        gc.collect()
        with _PeakRSS() as mem:
            t0, c0, k0 = time.perf_counter(), time.process_time(), os.times().system
            try:
                out = fn()
            except Exception as exc:  # the benchmark reports failures
                note = f"{type(exc).__name__}"
            seconds, used = time.perf_counter() - t0, time.process_time() - c0
            kernel = os.times().system - k0
        if seconds < best:
            best, cpu, sys_s = seconds, used, kernel
        peak = max(peak, mem.peak)
        if note:
            break
    return out, Timing(best, peak / 2**20, note, cpu, sys_s)


def _parse_sim(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=1_000_000, help="customers to simulate")
    ap.add_argument("--days", type=int, default=730, help="days of history")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--end", default="2024-06-30", help="last day of data (as_of)")
    ap.add_argument(
        "--sim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="simulator parameter (repeatable), e.g. alpha=10",
    )
    ap.add_argument(
        "--store",
        type=Path,
        default=None,
        help="a store folder to read instead of simulating (e.g. one written by "
        "bench_job.py or `bmkt simulate`); bmkt reads its orders in place with DuckDB",
    )
    ap.add_argument("--skip-lifetimes", action="store_true", help="time bmkt only")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run each step N times, report the fastest"
    )
    args = ap.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    warnings.simplefilter("ignore", FutureWarning)

    from bmkt import clv, engine, rfm
    from bmkt.simulate import simulate_store

    engine.default_connection().raw_sql("SET enable_progress_bar=false")

    t0 = time.perf_counter()
    if args.store is not None:  # Parquet in place: the orders never become a pandas frame
        from bmkt.io import open_store

        orders = open_store(args.store).table("orders")
        n = engine.to_pandas(orders.aggregate(n=orders.count(), b=orders.customer_id.nunique()))
        n_orders, n_buyers = int(n["n"][0]), int(n["b"][0])
        n_customers = int(open_store(args.store).table("customers").count().execute())
        log.info("store %s: %d orders of %d buyers", args.store, n_orders, n_buyers)
    else:
        log.info("simulating %d customers over %d days ...", args.customers, args.days)
        store = simulate_store(
            n_customers=args.customers,
            days=args.days,
            seed=args.seed,
            end=args.end,
            email=False,
            web=False,
            **_parse_sim(args.sim),
        )
        orders = store["orders"]
        del store
        gc.collect()
        n_customers, n_orders = args.customers, len(orders)
        log.info(
            "simulated %d orders of %d buyers in %.1f s",
            len(orders),
            orders["customer_id"].nunique(),
            time.perf_counter() - t0,
        )

    # warm up both libraries on CDNOW (imports, DuckDB start-up, first compilations),
    # so that the timings below measure the work, not one-off start-up costs
    from bmkt import datasets

    cdnow = datasets.load_cdnow()
    warm = rfm.summarize(cdnow, as_of="1998-06-30")
    clv.clv(clv.BetaGeo().fit(warm), clv.GammaGamma().fit(warm), warm)
    rfm.segment(rfm.score(warm))
    if not args.skip_lifetimes:
        from lifetimes.utils import summary_data_from_transaction_data

        summary_data_from_transaction_data(
            cdnow, "customer_id", "ordered_at", observation_period_end="1998-06-30"
        )

    rows: dict[str, dict[str, Timing]] = {}

    # ---- bmkt -------------------------------------------------------------
    rows["summary"] = {}
    s, rows["summary"]["bmkt"] = _timed(lambda: rfm.summarize(orders, as_of=args.end))
    bg, t_bg = _timed(lambda: clv.BetaGeo().fit(s))
    gg, t_gg = _timed(lambda: clv.GammaGamma().fit(s))
    value, t_clv = _timed(lambda: clv.clv(bg, gg, s, horizon=12, discount_rate=0.01))
    seg, t_rfm = _timed(lambda: rfm.segment(rfm.score(s)))
    rows["bgnbd_fit"] = {"bmkt": t_bg}
    rows["gg_fit"] = {"bmkt": t_gg}
    rows["clv"] = {"bmkt": t_clv}
    rows["rfm"] = {"bmkt": t_rfm, "lifetimes": Timing(note="n/a")}
    log.info("bmkt BG/NBD: %s", bg.params_.round(4).to_dict())
    log.info("bmkt Gamma-Gamma: %s", gg.params_.round(4).to_dict())
    log.info("bmkt: %d customers, %d patterns", len(s), bg.n_patterns_)

    # ---- lifetimes --------------------------------------------------------
    if not args.skip_lifetimes:
        from lifetimes import BetaGeoFitter, GammaGammaFitter
        from lifetimes.utils import summary_data_from_transaction_data

        if args.store is not None:  # lifetimes needs the orders in pandas
            orders = engine.to_pandas(orders.select("customer_id", "ordered_at", "revenue"))

        ls, rows["summary"]["lifetimes"] = _timed(
            lambda: summary_data_from_transaction_data(
                orders,
                "customer_id",
                "ordered_at",
                monetary_value_col="revenue",
                observation_period_end=args.end,
                freq="D",
            )
        )
        lbg, rows["bgnbd_fit"]["lifetimes"] = _timed(
            lambda: BetaGeoFitter().fit(ls["frequency"], ls["recency"], ls["T"])
        )
        rep = ls[(ls["frequency"] > 0) & (ls["monetary_value"] > 0)]
        lgg, rows["gg_fit"]["lifetimes"] = _timed(
            lambda: GammaGammaFitter().fit(rep["frequency"], rep["monetary_value"])
        )
        note = ""
        if lbg is None:
            lbg = BetaGeoFitter()
            lbg.params_ = bg.params_.copy()
            lbg.predict = lbg.conditional_expected_number_of_purchases_up_to_time
            note = "bmkt params"
        else:
            log.info("lifetimes BG/NBD: %s", lbg.params_.round(4).to_dict())
        if lgg is None:
            lgg = GammaGammaFitter()
            lgg.params_ = gg.params_.copy()
            note = "bmkt params"
        else:
            log.info("lifetimes Gamma-Gamma: %s", lgg.params_.round(4).to_dict())
        lvalue, rows["clv"]["lifetimes"] = _timed(
            lambda: lgg.customer_lifetime_value(
                lbg,
                ls["frequency"],
                ls["recency"],
                ls["T"],
                ls["monetary_value"],
                time=12,
                discount_rate=0.01,
                freq="D",
            )
        )
        rows["clv"]["lifetimes"].note = rows["clv"]["lifetimes"].note or note
        if lvalue is not None and value is not None:
            joined = pd.concat([value, lvalue.rename("lt")], axis=1, join="inner")
            rel = (joined["clv"] - joined["lt"]).abs() / joined["lt"].abs().clip(lower=1e-9)
            log.info("CLV bmkt vs lifetimes: median relative difference %.2g", rel.median())

    # ---- table ------------------------------------------------------------
    def fmt(t: Timing | None, what: str) -> str:
        if t is None:
            return "—"
        if what == "s":
            if t.seconds is None:
                return t.note or "—"
            return f"{t.seconds:.2f}" + (f" ({t.note})" if t.note else "")
        return "—" if t.peak_mib is None else f"{t.peak_mib:,.0f}"

    header = "| step | bmkt s | lifetimes s | ratio | bmkt peak RSS MiB | lifetimes peak RSS MiB |"
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for step, r in rows.items():
        b, lt = r.get("bmkt"), r.get("lifetimes")
        ratio = "—"
        if b and lt and b.seconds and lt.seconds and not b.note:
            ratio = f"{lt.seconds / b.seconds:.1f}x"
        lines.append(
            f"| {step} | {fmt(b, 's')} | {fmt(lt, 's')} | {ratio} | {fmt(b, 'm')} | {fmt(lt, 'm')} |"
        )
    print()
    print(
        f"{n_customers:,} customers, {n_orders:,} orders, {os.cpu_count()} cores, "
        f"best of {REPEAT}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
