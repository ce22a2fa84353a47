import pytest

from dynamo.llm.busy import BusyMonitor, BusyThresholds

pytestmark = pytest.mark.unit


def test_decode_latch_has_hysteresis():
    m = BusyMonitor(BusyThresholds(0.5, None, None))
    m.add_worker(1, total_kv_blocks=100, max_num_batched_tokens=8192)
    assert not m.update(1, kv_used_blocks=50)  # at the limit: not busy
    assert m.update(1, kv_used_blocks=51) and m.busy_workers() == {1}
    # The router's own view still says it's over: the latch holds though the worker dropped back.
    m.update(1, active_decode_blocks=70)
    m.update(1, kv_used_blocks=10)
    assert m.busy_workers() == {1}
    m.update(1, active_decode_blocks=40)
    assert m.busy_workers() == set()


def test_prefill_thresholds_abs_and_frac():
    m = BusyMonitor(BusyThresholds(None, 1000, 2.0))
    m.add_worker(1, 100, max_num_batched_tokens=100)
    m.update(1, active_prefill_tokens=150)
    assert m.busy_workers() == set()
    m.update(1, active_prefill_tokens=201)  # > 2.0 x 100
    assert m.busy_workers() == {1}
    m.set_thresholds(BusyThresholds(None, 1000, None))
    assert m.busy_workers() == set()
    m.update(1, active_prefill_tokens=1001)
    assert m.busy_workers() == {1}


def test_worker_busy_only_when_all_dp_ranks_busy():
    m = BusyMonitor(BusyThresholds(0.5, None, None))
    m.add_worker(7, 10, None, dp_size=2)
    m.update(7, 0, kv_used_blocks=9)
    assert m.busy_workers() == set()
    m.update(7, 1, kv_used_blocks=9)
    assert m.busy_workers() == {7}
    m.update(7, 1, kv_used_blocks=1)
    assert m.busy_workers() == set()


def test_disabled_thresholds_and_unknown_workers():
    m = BusyMonitor(BusyThresholds(None, None, None))
    m.add_worker(1, 10, 10)
    m.update(1, kv_used_blocks=10_000, active_prefill_tokens=10**9)
    assert m.busy_workers() == set()
    assert not m.update(99, kv_used_blocks=1)
    m.remove_worker(1)
    assert m.busy_workers() == set()


def test_retain_forgets_removed_workers() -> None:
    from dynamo.llm.busy import BusyMonitor

    mon = BusyMonitor()
    for wid in (1, 2, 3):
        mon.add_worker(wid, total_kv_blocks=10, max_num_batched_tokens=None)
        mon.update(wid, kv_used_blocks=11)
    assert mon.busy_workers() == {1, 2, 3}
    mon.retain({2})
    assert mon.busy_workers() == {2} and set(mon._workers) == {2}
