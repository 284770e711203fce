"""jaxgrad.report.tables: one table renderer (rich) for every printed table."""

import pytest

from jaxgrad.report.tables import render_table


def test_columns_line_up_and_numbers_align_right():
    text = render_table([["a", 1.5], ["longer name", 22]], ["scenario", "value"], right=["value"])
    head, first, second = text.splitlines()
    assert head.split() == ["scenario", "value"]
    # right-aligned numbers end in the same column as their header; names start at column 0
    assert first.index("1.5") + 3 == second.index("22") + 2 == head.index("value") + 5
    assert first.startswith("a ") and second.startswith("longer name")
    assert "\x1b" not in text  # no colour codes in logs


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="a row has 1 cells, the table 2 columns"):
        render_table([["only one"]], ["a", "b"])
