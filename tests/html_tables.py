"""Reads the dashboard's HTML tables (app/html_table.py) back into rows, for page tests: AppTest
holds an `st.html` element as its HTML text."""

from html.parser import HTMLParser

import pandas as pd


class TableReader(HTMLParser):
    """Collects every <table>: header names, cell texts and each cell's link."""

    def __init__(self):
        super().__init__()
        self.tables = []   # [(header, [[(text, href)]])]
        self.cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self.cell = [tag, "", None]
        elif tag == "a" and self.cell is not None:
            self.cell[2] = dict(attrs).get("href")

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            kind, text, href = self.cell
            header, rows = self.tables[-1]
            (header.append(text) if kind == "th" else rows[-1].append((text, href)))
            self.cell = None


def read_tables(markup):
    """[(DataFrame of the cell texts, DataFrame of the cells' links)] of every table in `markup`."""
    reader = TableReader()
    reader.feed(markup)
    tables = []
    for header, rows in reader.tables:
        rows = [r for r in rows if r]   # the header's own <tr>
        tables.append((pd.DataFrame([[t for t, _ in r] for r in rows], columns=header),
                       pd.DataFrame([[h for _, h in r] for r in rows], columns=header)))
    return tables


def html_tables(at):
    """Every HTML table an AppTest page shows, as (texts, links) DataFrames."""
    return [table for element in at.get("html") for table in read_tables(element.proto.body)]


def tables_with_column(at, column):
    """The texts of every table on an AppTest page that has this column (tables are told apart by
    their columns)."""
    return [texts for texts, _ in html_tables(at) if column in texts.columns]


def table_with_column(at, column):
    """The first of `tables_with_column`."""
    return tables_with_column(at, column)[0]
