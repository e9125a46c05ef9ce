"""Static tables as plain HTML (pure): rows of dicts -> one `<table>` string for `st.html`.

Why not `st.dataframe` / `st.table`: both load Streamlit's Arrow and grid components, about
0.6 s of browser time on a 2-core machine per page that shows one
(`bench/bench_streamlit_elements.py`); an HTML table costs what plain text costs. The
dashboard's tables are read, not edited, their cells are formatted text (so a grid would sort
them as text), and where a row leads somewhere its cell is a link. Every cell is escaped: run
names, paths and errors come from users, and nothing in them may become markup.
"""

import html
import math
import numbers

TABLE_CLASS = "bp-table"
# Short cells (names, numbers, dates) stay on one line; longer texts (errors, paths) wrap.
WRAP_ABOVE_CHARS = 40

# Scoped to the table's class; colours from `currentColor` so the light and dark themes both read.
STYLE = f"""<style>
.{TABLE_CLASS}-wrap {{ overflow: auto; border: 1px solid rgba(128,128,128,.3); border-radius: .5rem; }}
.{TABLE_CLASS} {{ border-collapse: collapse; width: 100%; font-size: .875rem; line-height: 1.4; }}
.{TABLE_CLASS} th {{ position: sticky; top: 0; text-align: left; font-weight: 600; padding: .35rem .6rem;
  background: rgba(128,128,128,.12); backdrop-filter: blur(6px); white-space: nowrap; }}
.{TABLE_CLASS} td {{ padding: .3rem .6rem; border-top: 1px solid rgba(128,128,128,.2); vertical-align: top;
  white-space: nowrap; }}
.{TABLE_CLASS} td.long {{ white-space: normal; min-width: 16rem; }}
.{TABLE_CLASS} tr:hover td {{ background: rgba(128,128,128,.08); }}
.{TABLE_CLASS} a {{ color: inherit; text-decoration: underline; text-underline-offset: 2px; }}
.{TABLE_CLASS} .bar {{ display: inline-block; width: 5rem; height: .5rem; margin-right: .4rem;
  border-radius: .25rem; background: rgba(128,128,128,.25); vertical-align: middle; overflow: hidden; }}
.{TABLE_CLASS} .bar > span {{ display: block; height: 100%; background: #ff4b4b; }}
</style>"""


def cell_text(value):
    """What a cell shows: '' for None, '–' for NaN/inf, floats to 4 decimals without trailing
    zeros (tiny ones to 3 significant digits), anything else as its text."""
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        if not math.isfinite(value):
            return "–"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def bar_html(percent):
    """A progress bar and its number for a value 0..100 (out-of-range values are drawn clipped)."""
    try:
        value = float(percent)
    except (TypeError, ValueError):
        return html.escape(cell_text(percent))
    width = min(max(value, 0.0), 100.0)
    return f'<span class="bar"><span style="width:{width:.0f}%"></span></span>{value:.0f}%'


def wrap_class(value):
    return ' class="long"' if len(cell_text(value)) > WRAP_ABOVE_CHARS else ""


def cell_html(row, column, href, bars):
    if column in bars:
        return bar_html(row.get(column))
    text = html.escape(cell_text(row.get(column)))
    if href:
        return f'<a href="{html.escape(href, quote=True)}">{text}</a>'
    return text


def html_table(rows, columns=None, links=None, bars=(), max_height_px=None):
    """One HTML table of `rows` (dicts).

    `columns`: which, in this order (default: the first row's keys); `links`: {column: one
    relative address (or None) per row}, that column's cells become links (`st.html` opens them in the same
    tab, like a page of the app; Markdown links would open a new one); `bars`: columns of 0..100
    drawn as progress bars; `max_height_px`: the body scrolls under a sticky header."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    links = dict(links or {})
    bars = set(bars)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td{wrap_class(row.get(c))}>"
                                    f"{cell_html(row, c, links[c][i] if c in links else None, bars)}</td>"
                                    for c in columns) + "</tr>"
                   for i, row in enumerate(rows))
    height = f' style="max-height:{int(max_height_px)}px"' if max_height_px else ""
    return (f'{STYLE}<div class="{TABLE_CLASS}-wrap"{height}><table class="{TABLE_CLASS}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
