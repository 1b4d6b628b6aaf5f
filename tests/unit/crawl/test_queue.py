"""FrontierQueue: codes out by priority, LIFO or FIFO within one, a few with their object."""

from __future__ import annotations

from array import array

from scrapy_checkpoint.crawl.queue import FrontierQueue


def _drain(queue: FrontierQueue) -> list[tuple[int, object]]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item)
    return out


def test_highest_priority_first_then_last_in_first_out() -> None:
    queue = FrontierQueue(lifo=True, hot=2)
    for code, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1)]:
        queue.push(code, priority, request=f"r{code}")
    assert (len(queue), queue.hot, queue.top_priority()) == (5, 2, 5)
    # Only the two most recent kept their object: the others are rebuilt at their turn.
    assert _drain(queue) == [(4, "r4"), (2, None), (3, None), (1, None), (5, "r5")]
    assert not queue


def test_first_in_first_out_keeps_the_oldest_objects() -> None:
    queue = FrontierQueue(lifo=False, hot=2)
    for code in range(1, 6):
        queue.push(code, 0, request=f"r{code}")
    assert _drain(queue) == [(1, "r1"), (2, "r2"), (3, None), (4, None), (5, None)]


def test_a_resume_extends_in_order_by_blocks() -> None:
    for lifo in (True, False):
        queue = FrontierQueue(lifo=lifo, hot=0)
        queue.extend(array("Q", range(10, 15000)), array("i", [3]) * 14990)
        queue.extend([1, 2, 3], [0, 9, 0])
        out = [code for code, _ in _drain(queue)]
        assert out[0] == 2  # priority 9
        middle = out[1:-2]
        assert middle == (list(range(14999, 9, -1)) if lifo else list(range(10, 15000)))
        assert out[-2:] == ([3, 1] if lifo else [1, 3])


def test_a_resume_with_more_than_one_priority_queues_each_unit_by_its_own() -> None:
    queue = FrontierQueue(lifo=False, hot=0)
    priorities = array("i", [0]) * 5000
    priorities[4321] = 7
    queue.extend(array("Q", range(5000)), priorities)
    out = [code for code, _ in _drain(queue)]
    assert out == [4321] + [code for code in range(5000) if code != 4321]
