"""The estimate of a crawl's final size, on crawls simulated the way Scrapy orders them."""

from __future__ import annotations

from scrapy_checkpoint.estimate import DepthProfile


def _crawl(n: int, fanout: int, profile: DepthProfile, *, checks: int = 20) -> list[float]:
    """A depth-first crawl (Scrapy's LIFO) of a tree of ``n`` pages where page i links to
    its ``fanout`` children, the home page and its parent; the shown percent's lead over
    the true one (points) at ``checks`` moments."""
    stack, seen = [(0, 0)], {0}
    profile.add(0)
    done, leads = 0, []
    while stack:
        page, depth = stack.pop()
        links = [c for c in range(fanout * page + 1, fanout * page + fanout + 1) if c < n]
        for c in [*links, 0, max(0, (page - 1) // fanout)]:
            if c not in seen:
                seen.add(c)
                stack.append((c, depth + 1))
                profile.add(depth + 1)
        profile.finish(depth)
        done += 1
        if done % 20 == 0:
            profile.sample()
        if done % (n // checks) == 0 and stack:
            estimate = profile.estimate(done, len(stack), 0)
            assert estimate.low == done + len(stack)
            leads.append(100 * done / estimate.total - 100 * done / n)
    return leads


def test_on_a_link_tree_the_percent_stays_close_to_the_truth() -> None:
    leads = _crawl(3000, 3, DepthProfile())
    assert max(abs(lead) for lead in leads) < 10
    known_only = 100 * 750 / (750 + 1100)  # what done + pending alone said at 25% before
    assert known_only - 25 > 10


def test_a_completed_run_is_the_prior_of_the_next() -> None:
    leads = _crawl(4000, 20, DepthProfile(history_total=4000))
    assert max(abs(lead) for lead in leads) < 1


def test_nothing_left_to_find_is_exact_and_a_depth_limit_caps_the_expectation() -> None:
    profile = DepthProfile({0: 1, 1: 10}, {0: 1, 1: 10})
    estimate = profile.estimate(11, 0, 0)
    assert (estimate.total, estimate.wide, estimate.source) == (11, False, "known")
    limited = DepthProfile({0: 1, 1: 10, 2: 100}, {0: 1, 1: 5}, depth_limit=2)
    # Each pending unit at depth 1 finds 20 (100 found by 5 done), those at the limit none.
    assert limited.estimate(6, 105, 0).total == 6 + 5 * (1 + 20) + 100


def test_an_endless_site_is_far_bigger_than_known_not_a_number_of_forty_digits() -> None:
    depths = range(40)
    profile = DepthProfile({d: 100 ** min(d, 3) for d in depths}, {d: 1 for d in depths})
    estimate = profile.estimate(40, 10_000, 0)
    assert estimate.total == (40 + 10_000) * 1000
    assert estimate.wide
