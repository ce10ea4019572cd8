"""The report's "units computed now, from cache" counts this invocation's own work, also in a folder
that holds another plan's units (a 5-seed run resumed beside a finished 3-seed one)."""

from inflora.experiment.cache import UnitCache, unit_counts


def _finish(cache: UnitCache, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        cache.finish("arm", {"i": i}, {"i": i})


def test_counts_are_what_this_invocation_finished(tmp_path):
    cache = UnitCache(tmp_path)
    _finish(cache, 5)  # another plan's units, already in the folder
    _, log = cache.logged("first", lambda: _finish(cache, 3, start=5))
    assert unit_counts(log, total=4) == {"cached_units": 1, "computed_units": 3}
    _, log = cache.logged("re-render", lambda: None)
    assert unit_counts(log, total=4) == {"cached_units": 4, "computed_units": 0}


def test_computed_never_exceeds_the_plan(tmp_path):
    cache = UnitCache(tmp_path)
    _, log = cache.logged("run", lambda: _finish(cache, 6))
    assert unit_counts(log, total=4) == {"cached_units": 0, "computed_units": 4}
