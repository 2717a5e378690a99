"""Publishing send lists: atomic, deterministic, spreadsheet-safe, addresses only where needed."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bmkt.publish as publish_module
from bmkt.errors import ConfigError, PublishError
from bmkt.plan import SEND_COLUMNS, build_plan, load_campaigns
from bmkt.publish import neutralise_formula, package_versions, publish_plan, publish_segments

AS_OF = "2024-06-30"


def make_plan(offer: str = "10% off", **kw: Any) -> Any:
    n = 30
    cust = pd.DataFrame(
        {
            "customer_id": range(1, n + 1),
            "email": [f"c{i}@example.com" for i in range(1, n + 1)],
            "email_status": ["subscribed"] * (n - 2) + ["unsubscribed", "bounced"],
            "email_consent": True,
            "timezone": ["Europe/Berlin", None, "America/New_York"] * (n // 3),
        }
    )
    assign = pd.DataFrame(
        {"segment": ["Champions", "+cmd|' /C calc'!A0"] * (n // 2)},
        index=pd.Index(range(1, n + 1), name="customer_id"),
    )
    triggers = pd.DataFrame(
        {
            "customer_id": [1, 2, 3],
            "trigger": "cart_abandonment",
            "triggered_at": pd.Timestamp("2024-06-29 10:00"),
            "products": [[5, 6], [7], [8]],
            "categories": [["@SUM(1+1)"], ["\tshoes"], ["-2+3"]],
        }
    )
    campaigns = load_campaigns(
        {
            "campaigns": [
                {
                    "campaign_id": "cart",
                    "template": "cart_abandonment.html.j2",
                    "audience": {"triggers": ["cart_abandonment"]},
                    "offer": '=HYPERLINK("http://evil")',
                    "priority": 5,
                    "holdout_share": 0.0,
                },
                {
                    "campaign_id": "news",
                    "template": "newsletter.html.j2",
                    "audience": {"segments": ["Champions", "+cmd|' /C calc'!A0"]},
                    "offer": offer,
                    "variants": {"A": 1, "B": 1},
                    "holdout_share": 0.3,
                },
            ]
        }
    )
    recs = pd.DataFrame(
        {"customer_id": [4, 4], "rank": [1, 2], "product_id": [11, 12], "score": 1.0}
    )
    return build_plan(
        cust, assign, triggers, campaigns, AS_OF, recommendations=recs, forgotten=None, **kw
    )


def publish(plan: Any, out: Path, run_id: str = "run1") -> Path:
    return publish_plan(
        plan,
        out,
        run_id,
        AS_OF,
        parameters={"as_of": AS_OF, "max_per_day": 1},
        inputs_fingerprints={"store": "sha256:abc"},
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_files_descriptor_and_hashes(tmp_path: Path) -> None:
    plan = make_plan()
    target = publish(plan, tmp_path)
    assert target == tmp_path / "run1" / "send_lists"
    names = sorted(p.name for p in target.iterdir())
    assert names == [
        "datapackage.json",
        "exclusions.csv",
        "exclusions_detail.csv",
        "global_control.csv",
        "holdout_cart.csv",
        "holdout_news.csv",
        "manifest.json",
        "send_cart.csv",
        "send_news.csv",
    ]
    desc = json.loads((target / "datapackage.json").read_text())
    assert (target / "manifest.json").read_bytes() == (target / "datapackage.json").read_bytes()
    assert desc["profile"] == "tabular-data-package"
    assert desc["run_id"] == "run1" and desc["as_of"] == AS_OF
    assert desc["inputs"] == {"store": "sha256:abc"}
    assert set(desc["package_versions"]) == {"bmkt", "pandas", "numpy", "duckdb", "ibis"}
    assert desc["package_versions"] == package_versions()
    assert desc["exclusions_by_reason"] == plan.exclusions.by_reason()
    for res in desc["resources"]:
        data = (target / res["path"]).read_bytes()
        assert res["hash"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert res["bytes"] == len(data)
        frame = pd.read_csv(target / res["path"], dtype=str, keep_default_na=False)
        assert res["rows"] == len(frame) == desc["row_counts"][res["path"]]
        assert [f["name"] for f in res["schema"]["fields"]] == list(frame.columns)
    send = next(r for r in desc["resources"] if r["path"] == "send_news.csv")
    types = {f["name"]: f["type"] for f in send["schema"]["fields"]}
    assert types["customer_id"] == "integer" and types["send_at_utc"] == "datetime"
    news = pd.read_csv(target / "send_news.csv", dtype=str, keep_default_na=False)
    assert list(news.columns) == list(SEND_COLUMNS)
    assert news["send_at_utc"].str.fullmatch(r"2024-07-01T\d\d:00:00Z").all()
    assert len(news) == (plan.sends["campaign_id"] == "news").sum()
    counts = pd.read_csv(target / "exclusions.csv")
    assert list(counts.columns) == ["campaign_id", "reason", "customers"]
    assert counts["customers"].sum() == len(plan.exclusions.rows)


def test_rerun_is_byte_identical(tmp_path: Path) -> None:
    a = snapshot(publish(make_plan(), tmp_path / "a"))
    b = snapshot(publish(make_plan(), tmp_path / "b"))
    assert a == b
    assert all(b"\r\n" not in v for v in a.values())
    # republishing the same run id replaces it in place
    again = publish(make_plan(offer="20% off"), tmp_path / "a")
    assert b"20% off" in (again / "send_news.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a" / "run1").iterdir()) == ["send_lists"]


def test_formula_injection_is_neutralised(tmp_path: Path) -> None:
    target = publish(make_plan(), tmp_path)
    cart = pd.read_csv(target / "send_cart.csv", dtype=str, keep_default_na=False)
    assert set(cart["offer"]) == {'\'=HYPERLINK("http://evil")'}
    cats = dict(zip(cart["customer_id"], cart["trigger_categories"], strict=True))
    assert cats["1"] == "'@SUM(1+1)"
    assert cats["3"] == "'-2+3"
    news = pd.read_csv(target / "send_news.csv", dtype=str, keep_default_na=False)
    assert set(news["segment"]) <= {"Champions", "'+cmd|' /C calc'!A0"}
    held = pd.read_csv(target / "holdout_news.csv", dtype=str, keep_default_na=False)
    assert not held["segment"].str.startswith(("=", "+", "-", "@")).any()
    # ids and numbers are untouched
    assert cart["customer_id"].tolist() == ["1", "2", "3"]
    assert cart.loc[0, "abandoned_products"] == "5|6"
    assert neutralise_formula("\tx") == "'\tx"
    assert neutralise_formula("\rx") == "'\rx"
    assert neutralise_formula("a=b") == "a=b"
    assert neutralise_formula(-3) == -3


def test_emails_only_in_send_files(tmp_path: Path) -> None:
    plan = make_plan()
    target = publish(plan, tmp_path)
    emails = set(plan.sends["email"])
    for path in target.iterdir():
        text = path.read_text()
        found = {e for e in emails if e in text}
        assert bool(found) == path.name.startswith("send_"), path.name
    with pytest.raises(PublishError, match="email addresses in the parameters"):
        publish_plan(plan, tmp_path, "run2", AS_OF, {"owner": "c1@example.com"}, {})
    assert not (tmp_path / "run2" / "send_lists").exists()


def test_failure_midway_leaves_previous_run_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = publish(make_plan(), tmp_path)
    before = snapshot(target)
    real = publish_module._write_csv
    calls = {"n": 0}

    def flaky(frame: pd.DataFrame, path: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            path.write_bytes(b"customer_id,email\n1,partial")  # a half-written file
            raise OSError("disk full")
        return real(frame, path, *args, **kwargs)

    monkeypatch.setattr(publish_module, "_write_csv", flaky)
    with pytest.raises(PublishError, match="disk full.*previous publication is untouched"):
        publish(make_plan(offer="NEW"), tmp_path)
    assert snapshot(target) == before
    assert sorted(p.name for p in (tmp_path / "run1").iterdir()) == ["send_lists"]  # no temp

    # a first publication that fails leaves nothing at all
    calls["n"] = 0
    with pytest.raises(PublishError):
        publish(make_plan(), tmp_path, run_id="fresh")
    assert list((tmp_path / "fresh").iterdir()) == []


@pytest.mark.parametrize("what", ["send lists", "segments"])
def test_a_write_failing_in_the_writer_thread_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    # files are written (and synced) by a second thread while the next is rendered: a
    # failure there is raised once the writes are done, and the publication is undone
    def run(offer: str) -> Path:
        if what == "send lists":
            return publish(make_plan(offer=offer), tmp_path)
        assignment, scores = _segment_inputs()
        if offer != "OLD":
            scores = scores.assign(clv=scores["clv"] + 1.0)
        return publish_segments(assignment, scores, tmp_path, "run1", AS_OF)

    target = run("OLD")
    before = snapshot(target)
    real = publish_module._write_bytes
    threads: list[str] = []

    def flaky(path: Path, data: bytes) -> None:
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            path.write_bytes(data[: len(data) // 2])  # half a file
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(publish_module, "_write_bytes", flaky)
    with pytest.raises(PublishError, match="disk full.*previous publication is untouched"):
        run("NEW")
    assert threads[1].startswith("bmkt-publish")  # it failed in the writer thread
    assert snapshot(target) == before
    assert sorted(p.name for p in (tmp_path / "run1").iterdir()) == [target.name]  # no temp


def test_the_writer_thread_holds_a_bounded_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a large publication must not queue all its bytes at once: past the limit, write()
    # waits for the oldest writes to finish
    events: list[str] = []
    gate = threading.Event()

    def slow(path: Path, data: bytes) -> None:
        gate.wait(5)  # the first write is held until the main thread has tried the next
        events.append(f"written {path.name}")
        path.write_bytes(data)

    monkeypatch.setattr(publish_module, "_write_bytes", slow)
    with publish_module._Writer(max_pending_bytes=10) as writer:
        writer.write(tmp_path / "a", b"12345678")
        events.append("queued a")
        threading.Timer(0.2, gate.set).start()
        writer.write(tmp_path / "b", b"12345678")  # 16 bytes > 10: waits for a
        events.append("queued b")
        writer.write(tmp_path / "c", b"1")  # 9 bytes pending with b: no wait needed
        events.append("queued c")
    assert events[:3] == ["queued a", "written a", "queued b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_the_writer_stops_at_a_failed_write_and_cancels_on_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = publish_module._write_bytes
    # a failed write is raised by the next write() that finds it: rendering stops there
    failing = publish_module._Writer()
    monkeypatch.setattr(publish_module, "_write_bytes", lambda path, data: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        with failing as writer:
            writer.write(tmp_path / "a", b"1")
            writer._pending[0].exception()  # done (and failed)
            writer.write(tmp_path / "b", b"2")
            raise AssertionError("write() went on after a failed write")

    # an error in the block cancels the writes not started and waits for the running one,
    # so that nothing is written once the caller removes the folder
    started, gate = threading.Event(), threading.Event()
    written: list[str] = []

    def slow(path: Path, data: bytes) -> None:
        started.set()
        gate.wait(5)
        real(path, data)
        written.append(path.name)

    monkeypatch.setattr(publish_module, "_write_bytes", slow)
    with pytest.raises(PublishError, match="leak"):
        with publish_module._Writer() as writer:
            for name in ("a", "b", "c"):
                writer.write(tmp_path / name, b"x")
            started.wait(5)
            threading.Timer(0.2, gate.set).start()
            raise PublishError("leak")
    assert written == ["a"]  # the running write finished; b and c never started
    assert [f.cancelled() for f in writer._pending] == [False, True, True]
    assert not [t for t in threading.enumerate() if t.name.startswith("bmkt-publish")]

    # an interrupt (Ctrl-C) while the block's end waits: the same, then the interrupt
    started.clear(), gate.clear(), written.clear()
    writer = publish_module._Writer()
    real_shutdown = writer._pool.shutdown
    calls: list[bool] = []

    def interrupted_once(wait: bool = True, *, cancel_futures: bool = False) -> None:
        calls.append(cancel_futures)
        if len(calls) == 1:
            threading.Timer(0.2, gate.set).start()
            raise KeyboardInterrupt
        real_shutdown(wait=wait, cancel_futures=cancel_futures)

    writer._pool.shutdown = interrupted_once  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        with writer:
            for name in ("d", "e"):
                writer.write(tmp_path / name, b"x")
            started.wait(5)
    assert calls == [False, True] and written == ["d"]
    assert [f.cancelled() for f in writer._pending] == [False, True]


def test_failure_while_swapping_restores_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = publish(make_plan(), tmp_path)
    before = snapshot(target)
    real_rename = publish_module.os.rename

    def rename(src: Any, dst: Any) -> None:
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(publish_module.os, "rename", rename)
    with pytest.raises(PublishError, match="rename failed"):
        publish(make_plan(offer="NEW"), tmp_path)
    monkeypatch.undo()
    assert snapshot(target) == before
    assert sorted(p.name for p in (tmp_path / "run1").iterdir()) == ["send_lists"]


def test_interrupted_swap_is_repaired(tmp_path: Path) -> None:
    target = publish(make_plan(), tmp_path)
    backup = target.with_name(".send_lists.old")
    target.rename(backup)  # a crash between the two renames
    (target.parent / ".send_lists.tmp-dead").mkdir()
    publish(make_plan(), tmp_path)
    assert sorted(p.name for p in target.parent.iterdir()) == ["send_lists"]


def test_plan_sanity_checks(tmp_path: Path) -> None:
    plan = make_plan()
    with pytest.raises(ConfigError, match="run_id must be"):
        publish_plan(plan, tmp_path, "../x", AS_OF)
    bad = make_plan()
    bad.sends.loc[0, "email"] = "=evil@example.com"
    with pytest.raises(PublishError, match="1 sends have a missing or malformed email"):
        publish_plan(bad, tmp_path, "r", AS_OF)
    overlap = make_plan()
    overlap.holdouts = pd.concat(
        [overlap.holdouts, overlap.sends.loc[[0], ["customer_id", "campaign_id", "segment"]]]
    )
    with pytest.raises(PublishError, match="both held out and sent"):
        publish_plan(overlap, tmp_path, "r", AS_OF)
    assert not (tmp_path / "r" / "send_lists").exists()


# --------------------------------------------------------------------------- segments


def _segment_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    idx = pd.Index([3, 1, 2, 4], name="customer_id")
    assignment = pd.DataFrame(
        {"segment": ["VIP", "Everyone else", "VIP", "=Odd"], "in_vip": [True, False, True, False]},
        index=idx,
    )
    scores = pd.DataFrame(
        {"clv": [10.0, 0.0, 5.5, 1.0], "p_alive": [0.9, None, 0.5, 0.1], "email_status": "x"},
        index=idx,
    )
    return assignment, scores


def test_publish_segments_writes_lists_and_descriptor(tmp_path: Path) -> None:
    from bmkt.publish import publish_segments

    assignment, scores = _segment_inputs()
    out = publish_segments(assignment, scores, tmp_path, "run1", "2024-06-30")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "assignment.csv",
        "datapackage.json",
        "segment_everyone_else.csv",
        "segment_odd.csv",
        "segment_sizes.csv",
        "segment_vip.csv",
    ]
    vip = pd.read_csv(out / "segment_vip.csv")
    assert vip.customer_id.tolist() == [2, 3] and vip.columns.tolist() == [
        "customer_id",
        "segment",
        "clv",
        "p_alive",
    ]
    assert (out / "segment_odd.csv").read_text().splitlines()[1] == "4,'=Odd,1,0.1"
    desc = json.loads((out / "datapackage.json").read_text())
    for res in desc["resources"]:
        data = (out / res["path"]).read_bytes()
        assert res["hash"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert desc["row_counts"]["assignment.csv"] == 4
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    publish_segments(assignment, scores, tmp_path, "run1", "2024-06-30")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # byte-identical rerun


def test_publish_segments_refuses_addresses_and_keeps_previous(tmp_path: Path) -> None:
    from bmkt.errors import PublishError
    from bmkt.publish import publish_segments

    assignment, scores = _segment_inputs()
    out = publish_segments(assignment, scores, tmp_path, "run1", "2024-06-30")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    leaky = scores.assign(top_category=["a@example.com", "b", "c", "d"])
    with pytest.raises(PublishError, match="email addresses in a segment file"):
        publish_segments(assignment, leaky, tmp_path, "run1", "2024-06-30")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["segments"]


# --------------------------------------------------------------------------- CSV writer

_TEXT = st.text(alphabet=st.sampled_from(list("ab ,\"'\n\r\t=+-@;|xé0")), min_size=0, max_size=6)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 0.1, 1 / 3, 1e20, 1e-5, 123456789012.0]
)
_OBJECTS = st.one_of(
    _TEXT,
    st.none(),
    st.just(float("nan")),
    st.integers(-5, 5),
    _FLOATS,
    st.booleans(),
    st.just(np.float64(0.25)),
    st.just(pd.Timestamp("2024-07-01 10:00")),
)
_ONLY_STAMPS = st.just(pd.Timestamp("2024-07-01 10:00")) | st.none()


@st.composite
def _frames(draw: Any) -> pd.DataFrame:
    n = draw(st.integers(0, 6))
    kinds = draw(
        st.lists(
            st.sampled_from(
                ["int", "float", "bool", "text", "object", "category", "boolean", "datetime"]
            ),
            min_size=1,
            max_size=5,
        )
    )
    names = ["customer_id", "offer", "rec_1", "send_at_utc", "segment", "x,y", 'q"'] + [
        f"c{i}" for i in range(5)
    ]
    cols: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        name = draw(st.sampled_from(names)) if i else names[i]
        if name == "send_at_utc" and kind != "datetime":
            name = "not_a_time"  # the writer formats timestamp columns by name
        name = name if name not in cols else f"{name}_{i}"
        if kind == "int":
            values: Any = draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n))
        elif kind == "float":
            values = np.array(draw(st.lists(_FLOATS, min_size=n, max_size=n)), dtype=float)
        elif kind == "bool":
            values = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        elif kind == "text":
            values = pd.Series(
                draw(st.lists(_TEXT | st.none(), min_size=n, max_size=n)), dtype=object
            )
        elif kind == "object":
            cells = _OBJECTS if draw(st.booleans()) else _ONLY_STAMPS
            values = pd.Series(draw(st.lists(cells, min_size=n, max_size=n)), dtype=object)
        elif kind == "category":
            values = pd.Categorical(draw(st.lists(_TEXT | st.none(), min_size=n, max_size=n)))
        elif kind == "boolean":
            values = pd.array(
                draw(st.lists(st.booleans() | st.none(), min_size=n, max_size=n)), dtype="boolean"
            )
        else:
            stamps = draw(st.lists(st.integers(0, 10**9) | st.none(), min_size=n, max_size=n))
            values = pd.to_datetime(
                [
                    None if s is None else pd.Timestamp("2024-01-01") + pd.Timedelta(seconds=s)
                    for s in stamps
                ]
            )
        cols[name] = pd.Series(values).reset_index(drop=True)
    return pd.DataFrame(cols)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames())
def test_csv_writer_matches_pandas_to_csv(frame: pd.DataFrame) -> None:
    # the fast writer must give pandas' bytes exactly (files are hashed in manifests)
    expected = publish_module._prepare(frame).to_csv(
        index=False, lineterminator="\n", float_format="%.10g"
    )
    assert publish_module._csv_text(frame) == expected
