"""The dashboard's HTML tables: what users typed stays text, links and bars are drawn as asked."""

import numpy as np
import pandas as pd

from app.html_table import bar_html, cell_text, html_table
from tests.html_tables import read_tables


def test_cells_are_escaped_so_a_run_name_cannot_become_markup():
    rows = [{"name": '<img src=x onerror="alert(1)"> & co', "id": "a1"}]
    markup = html_table(rows, links={"name": ['run?run=a1&x="1"']})
    assert "<img" not in markup and "&lt;img" in markup
    texts, links = read_tables(markup)[0]
    assert texts.loc[0, "name"] == '<img src=x onerror="alert(1)"> & co'   # shown as typed
    assert links.loc[0, "name"] == 'run?run=a1&x="1"'                       # the address stays one attribute


def test_columns_keep_the_order_given_and_missing_values_read_empty():
    rows = [{"b": 1, "a": None}, {"a": "x"}]
    texts, links = read_tables(html_table(rows, columns=["a", "b"]))[0]
    assert list(texts.columns) == ["a", "b"]
    assert texts.values.tolist() == [["", "1"], ["x", ""]]
    assert links.isna().all().all()   # no link where none was asked for


def test_a_row_without_an_address_leaves_its_cell_plain():
    rows = [{"worker": "w1"}, {"worker": "w2"}]
    _, links = read_tables(html_table(rows, links={"worker": ["run?run=r1", None]}))[0]
    assert links.loc[0, "worker"] == "run?run=r1" and pd.isna(links.loc[1, "worker"])


def test_progress_bars_are_clipped_to_their_track_and_show_the_number():
    assert 'style="width:100%"' in bar_html(140) and bar_html(140).endswith("140%")
    assert 'style="width:0%"' in bar_html(-5)
    assert 'style="width:38%"' in bar_html(37.6) and bar_html(37.6).endswith("38%")
    assert bar_html("n/a") == "n/a" and bar_html(None) == ""


def test_an_empty_table_has_no_rows_and_a_scrolling_one_says_its_height():
    assert read_tables(html_table([]))[0][0].empty
    assert 'style="max-height:420px"' in html_table([{"a": 1}], max_height_px=420)


def test_numbers_read_as_a_table_shows_them():
    assert [cell_text(v) for v in (0.05, 1.0, 0.30000000000000004, 1234.56789, 0.0, -2.5)] == \
        ["0.05", "1", "0.3", "1234.5679", "0", "-2.5"]
    assert cell_text(0.000123) == "0.000123" and cell_text(float("nan")) == "–" and cell_text(7) == "7"
    assert cell_text(np.float32(0.25)) == "0.25" and cell_text(None) == ""
