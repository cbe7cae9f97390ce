"""DumpSlots: at most `size` dumps read the server at once; one more task may wait."""

from __future__ import annotations

import threading
import time

from prefect_dbbackup.tasks.limits import DumpSlots, dump_slot


def test_the_run_starts_one_task_more_than_its_slots_and_the_next_after_a_dump_ends():
    slots = DumpSlots(1)
    with slots.registered():
        assert slots.wait_to_start("a") and slots.wait_to_start("b")
        started = threading.Event()

        def third() -> None:
            slots.wait_to_start("c")
            started.set()

        threading.Thread(target=third, daemon=True).start()
        assert not started.wait(0.3)  # two started, neither dump ended: c waits
        slots.dump_ended("a")
        assert started.wait(2)
        slots.dump_ended("a")  # a second end of the same dump changes nothing
        assert len(slots._before_dump_end) == 2


def test_never_more_dumps_at_once_than_slots():
    slots = DumpSlots(2)
    running, peak, lock = 0, 0, threading.Lock()

    def dump(name: str) -> None:
        nonlocal running, peak
        with dump_slot(name):
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            with lock:
                running -= 1

    with slots.registered():
        threads = [threading.Thread(target=dump, args=(f"db{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak == 2


def test_a_failed_dump_gives_its_slot_back():
    slots = DumpSlots(1)
    with slots.registered():
        slots.wait_to_start("a")
        try:
            with dump_slot("a"):
                raise RuntimeError("pg_dump failed")
        except RuntimeError:
            pass
        assert slots._before_dump_end == set()
        with dump_slot("b"):  # the semaphore was released: this does not block
            pass


def test_without_a_registered_run_a_dump_does_not_wait():
    with dump_slot("anything"):
        pass
