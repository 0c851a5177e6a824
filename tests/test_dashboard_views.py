"""The run page's views of a big fan-out, pure: a summary bounded whatever the number
of items, and the items and checks paged, filtered and ordered (failures first)."""

from __future__ import annotations

from functools import cache

import msgspec

from bench.fold import RETRY_EVERY, run_log
from sisas.dashboard.detail import RunDetail
from sisas.dashboard.index import RunIndex
from sisas.dashboard.views import build_detail, checks_page, items_page, run_view
from sisas.signals import StoredSignal


@cache
def _detail(items: int) -> RunDetail:
    signals, _ = run_log(items, f"views-{items}")
    return build_detail(signals)


def test_the_summary_of_a_fan_out_does_not_grow_with_its_items() -> None:
    small, big = run_view(detail=_detail(1000)), run_view(detail=_detail(3000))
    sizes = [len(msgspec.json.encode(v)) for v in (small, big)]
    assert sizes[1] < sizes[0] * 1.05, sizes  # a per-item field would add 2,000 of them
    work = next(p for p in big["phases"] if p["name"] == "work")
    assert work["items"] == work["items_done"] == 3000
    fan = work["fanout"]
    assert fan["counts"] == {"completed": 3000}
    assert fan["retried"] == fan["failed_total"] == 3000 // RETRY_EVERY
    assert [f["item"] for f in fan["failed"]] == [49, 99, 149, 199, 249]  # retried, by index
    assert fan["p50"] == fan["p95"] == fan["max"] == 0.001
    assert [lane["kind"] for lane in big["timeline"]["lanes"]] == ["attempt", "items", "attempt"]
    (lane,) = (lane for lane in big["timeline"]["lanes"] if lane["kind"] == "items")
    assert lane["attempts"] == 3000 + 3000 // RETRY_EVERY
    assert len(lane["density"]) == len(lane["bad"]) == 120
    groups = big["checks"]["groups"]
    assert {g["group"] for g in groups} == {
        f"{p}/contract/{c}"
        for p in ("source", "work", "total")
        for c in ("entry:item:int", "exit:int")
    }
    work_exit = next(g for g in groups if g["group"] == "work/contract/exit:int")
    assert (work_exit["passed"], work_exit["failed"]) == (3000, 0)
    assert big["incidents"]["total"] == 2 * 3000 // RETRY_EVERY  # a failure, a retry each
    assert len(big["incidents"]["latest"]) == 20


def test_items_are_paged_failed_and_retried_first_and_found_by_number() -> None:
    detail = _detail(1000)
    page = items_page(detail, "work", limit=25)
    assert page is not None and (page["matched"], len(page["rows"])) == (1000, 25)
    retried = [r["item"] for r in page["rows"] if r["attempt"]]
    assert retried == list(range(RETRY_EVERY - 1, 1000, RETRY_EVERY))  # 20 retried, first
    assert page["rows"][0]["error"] == "HardFailure: first attempt"
    second = items_page(detail, "work", offset=25, limit=25, order="index")
    assert second is not None and [r["item"] for r in second["rows"]] == list(range(25, 50))
    found = items_page(detail, "work", q="123")
    assert found is not None and [r["item"] for r in found["rows"]] == [123]
    assert items_page(detail, "work", status="failed") == {**found, "matched": 0, "rows": []}
    assert items_page(detail, "source") is None  # not fanned out
    assert items_page(detail, "nosuch") is None


def test_checks_are_paged_failures_first_within_a_group() -> None:
    detail = _detail(200)
    page = checks_page(detail, group="work/contract/entry:item:int", limit=10)
    assert page["matched"] == 200 + 200 // RETRY_EVERY  # the retried items checked twice
    assert all(r["group"] == "work/contract/entry:item:int" for r in page["rows"])
    assert checks_page(detail, failed_only=True)["matched"] == 0
    assert checks_page(detail, q="exit:int")["matched"] == 200 + 2


def test_an_index_kept_current_record_by_record_shows_what_one_built_at_once_shows() -> None:
    signals, _ = run_log(200, "views-live")
    records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(signals, 1)]
    live = RunIndex.of(records[:7])
    for start in range(7, len(records), 50):  # each batch overlaps what it has: passed over
        assert live.catch_up(records[start - 3 : start + 50])
    assert live.at(records[-1])
    whole = RunIndex.of(records)
    assert run_view(detail=live.detail) == run_view(detail=whole.detail)
    assert run_view(detail=whole.detail)["status"] == "completed"


def test_an_index_refuses_a_record_that_does_not_follow() -> None:
    signals, _ = run_log(20, "views-gap")
    records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(signals, 1)]
    index = RunIndex.of(records[:10])
    assert not index.catch_up(records[11:20])  # the 11th is missing: built again
    assert index.at(records[9])
