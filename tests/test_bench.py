"""The benchmarks' interleaving: balanced orders (bench/timing.py)."""

import collections
import itertools

import pytest

from bench import timing


@pytest.mark.parametrize("count", range(1, 14))
def test_balanced_orders_balance_predecessors_and_positions(count):
    orders = timing.balanced_orders(count)
    # One row per implementation, and their reverses for an odd count.
    assert len(orders) == (count if count % 2 == 0 else 2 * count)
    for row in orders:
        assert sorted(row) == list(range(count))
    repeats = 1 if count % 2 == 0 else 2
    follows = collections.Counter((a, b) for row in orders for a, b in itertools.pairwise(row))
    pairs = [(a, b) for a in range(count) for b in range(count) if a != b]
    assert {pair: follows[pair] for pair in pairs} == dict.fromkeys(pairs, repeats)
    positions = collections.Counter((k, item) for row in orders for k, item in enumerate(row))
    cells = [(k, item) for k in range(count) for item in range(count)]
    assert {cell: positions[cell] for cell in cells} == dict.fromkeys(cells, repeats)


def test_balanced_orders_of_four_match_the_williams_square():
    # Williams (1949), n = 4, first row 0 1 3 2 and its cyclic shifts (written by hand).
    assert timing.balanced_orders(4) == [[0, 1, 3, 2], [1, 2, 0, 3], [2, 3, 1, 0], [3, 0, 2, 1]]


def test_balanced_orders_of_none():
    assert timing.balanced_orders(0) == []


@pytest.mark.parametrize(
    ("per_round_s", "expected"),
    [
        (0.2, 44),  # 30 rounds asked: the next multiple of 22 fits in the 20 s budget
        (0.5, 22),  # 40 fit: one whole multiple
        (1.0, 20),  # 20 fit, no whole multiple: as many as fit
        (10.0, 3),  # 2 fit: at least 3
    ],
)
def test_sweep_rounds_are_whole_designs_within_the_budget(per_round_s, expected):
    from bench import sweep

    assert sweep.ROUND_BUDGET_S == 20.0
    assert sweep._round_count(30, 22, per_round_s) == expected
