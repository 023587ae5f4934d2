"""Who a rule usually hits (detector.engine.makeup): the usual population against a
naive recomputation, outside counts, the bound on remembered cells, exponential
decay, and the lossless round trip of its state."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.engine.makeup import MAX_CELLS, OVERFLOW, Makeup

PROPS = settings(max_examples=200, deadline=None, derandomize=True)
HALF_LIFE = 10_080.0  # the default: one week of one-minute buckets
MIN_OUTSIDE_SHARE = 0.01

cell_names = st.text("abcdefgh|", min_size=1, max_size=4)
cell_counts = st.dictionaries(cell_names, st.integers(1, 10_000).map(float), min_size=1)
coverages = st.floats(0.5, 0.99)


def naive_usual(counts: dict[str, float], coverage: float) -> tuple[int, float]:
    """Size of the smallest set of cells covering ``coverage`` of the targets, and its share."""
    total = sum(counts.values())
    covered = 0.0
    for size, n in enumerate(sorted(counts.values(), reverse=True), start=1):
        covered += n
        if covered >= coverage * total:
            return size, covered / total
    raise AssertionError("unreachable: all cells cover everything")


@PROPS
@given(cell_counts, coverages)
def test_usual_population_is_the_smallest_set_covering_the_targets(
    counts: dict[str, float], coverage: float
) -> None:
    m = Makeup()
    m.learn(counts, 0, HALF_LIFE)
    m.refresh(0, coverage)
    size, share = naive_usual(counts, coverage)
    usual = m.usual
    assert len(usual) == size
    assert sum(counts[c] for c in usual) >= coverage * sum(counts.values())
    outside = [counts[c] for c in counts if c not in usual]
    assert min(counts[c] for c in usual) >= max(outside, default=0.0)
    assert m.outside_share == pytest.approx(max(1 - share, MIN_OUTSIDE_SHARE), abs=1e-12)
    assert m.refreshed_bucket == 0


@pytest.mark.parametrize(
    ("counts", "coverage", "usual", "outside_share"),
    [
        ({"a": 95.0, "b": 5.0}, 0.95, {"a"}, 0.05),
        ({"a": 94.0, "b": 6.0}, 0.95, {"a", "b"}, MIN_OUTSIDE_SHARE),
        ({"a": 50.0, "b": 30.0, "c": 20.0}, 0.8, {"a", "b"}, 0.2),
        ({"a": 50.0, "b": 30.0, "c": 20.0}, 0.5, {"a"}, 0.5),
        ({"b": 10.0, "a": 10.0}, 0.5, {"a"}, 0.5),  # a tie goes to the first name
        ({"a": 1.0}, 0.95, {"a"}, MIN_OUTSIDE_SHARE),
    ],
)
def test_usual_population_examples(
    counts: dict[str, float], coverage: float, usual: set[str], outside_share: float
) -> None:
    m = Makeup()
    m.learn(counts, 5, HALF_LIFE)
    m.refresh(5, coverage)
    assert m.usual == usual
    assert m.outside_share == pytest.approx(outside_share)


def test_nothing_learned_means_no_usual_population() -> None:
    m = Makeup()
    m.learn({}, 3, HALF_LIFE)
    m.refresh(3, 0.95)
    assert (m.usual, m.outside_share, m.total) == (frozenset(), 1.0, 0.0)


@PROPS
@given(cell_counts, coverages, st.dictionaries(cell_names, st.floats(0, 1e6)))
def test_outside_counts_targets_in_cells_not_usual(
    learned: dict[str, float], coverage: float, cells: dict[str, float]
) -> None:
    m = Makeup()
    m.learn(learned, 0, HALF_LIFE)
    m.refresh(0, coverage)
    naive = math.fsum(n for c, n in cells.items() if c not in m.usual)
    assert m.outside(cells) == pytest.approx(naive, rel=1e-12, abs=1e-9)
    assert m.outside(dict.fromkeys(m.usual, 1.0)) == 0.0


@pytest.mark.parametrize("extra", [1, 44, 300])
def test_cells_beyond_the_bound_count_as_overflow(extra: int) -> None:
    m = Makeup()
    first = {f"cell-{i:04d}": 1.0 + i for i in range(MAX_CELLS)}
    m.learn(first, 0, HALF_LIFE)
    later = {f"late-{i:04d}": 2.0 for i in range(extra)}
    m.learn({**later, "cell-0000": 5.0}, 0, HALF_LIFE)
    assert len(m.counts) == MAX_CELLS + 1
    assert m.counts[OVERFLOW] == 2.0 * extra
    assert m.counts["cell-0000"] == 6.0  # a remembered cell keeps its own count
    assert m.total == sum(first.values()) + 2.0 * extra + 5.0
    assert math.fsum(m.counts.values()) == m.total


@pytest.mark.parametrize("half_life", [1.0, 60.0, 10_080.0])
def test_weight_doubles_every_half_life(half_life: float) -> None:
    h = int(half_life)
    m = Makeup()
    m.learn({"old": 1.0}, 100, half_life)
    assert m.decayed_total(100, half_life) == 1.0
    assert m.decayed_total(100 + h, half_life) == pytest.approx(0.5)
    assert m.decayed_total(100 + 2 * h, half_life) == pytest.approx(0.25)
    m.learn({"new": 1.0}, 100 + h, half_life)
    assert m.counts["new"] / m.counts["old"] == pytest.approx(2.0)
    assert m.decayed_total(100 + h, half_life) == pytest.approx(1.5)


def test_rescaling_keeps_decayed_totals_and_drops_negligible_cells() -> None:
    half_life = 10.0
    m = Makeup()
    m.learn({"a": 1e6, "b": 1.0}, 0, half_life)
    later = 410  # weight 2**41: past the rescaling point
    m.learn({"c": 1.0}, later, half_life)
    assert m.ref_bucket == later
    assert "b" not in m.counts  # one target 41 half-lives ago: below the pruning share
    assert m.counts["c"] == 1.0
    assert m.counts["a"] == pytest.approx(1e6 * 2.0**-41, rel=1e-12)
    assert m.decayed_total(later, half_life) == pytest.approx(1.0 + 1e6 * 2.0**-41)
    assert m.decayed_total(later + 10, half_life) == pytest.approx((1.0 + 1e6 * 2.0**-41) / 2)


learning = st.lists(
    st.tuples(st.integers(0, 200_000), st.dictionaries(cell_names, st.floats(0, 1e4))),
    max_size=20,
)


@PROPS
@given(learning, coverages)
def test_round_trip_is_exact(steps: list[tuple[int, dict[str, float]]], coverage: float) -> None:
    m = Makeup()
    for bucket, cells in sorted(steps, key=lambda s: s[0]):
        m.learn(cells, bucket, HALF_LIFE)
    m.refresh(max((b for b, _ in steps), default=0), coverage)
    back = Makeup.from_dict(orjson.loads(orjson.dumps(m.to_dict())))
    assert back == m
    assert back.to_dict() == m.to_dict()
