"""One self-contained HTML page: every table, the conformance matrix, plots embedded as base64.

No external resources (styles inline, images as data: URIs), so the file can be mailed or attached
to a CI run. A small inline script checks that every embedded image decoded and reports failures
on the console (the tests open the page in headless Chromium and look for errors).
"""

from __future__ import annotations

import base64
import html as _html
from pathlib import Path
from typing import Any

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em;
       color: #1a1a1a; max-width: 1500px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.6em 0; }
th, td { border: 1px solid #d0d0d0; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; max-width: 10em; vertical-align: bottom; } td:first-child, th:first-child { text-align: left; }
.pass { background: #d9f2d9; } .fail { background: #f7c6c6; font-weight: bold; }
.nc { background: #eeeeee; color: #777; } .error { background: #f9e0a8; }
.unavailable { background: #fafafa; color: #999; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
figure { margin: 0.5em 0; }
.scroll { overflow-x: auto; max-width: 100%; }
.meta td { text-align: left; white-space: normal; overflow-wrap: anywhere; }
.meta td:first-child { white-space: nowrap; vertical-align: top; }
.note { color: #444; font-size: 0.9em; max-width: 60em; line-height: 1.4; }
code { background: #f5f5f5; padding: 1px 4px; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) { bad++; }
  }
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-failed', String(bad));
  // Layout checks read by the tests: the page must not scroll sideways (wide tables scroll in
  // their own box), and the headline figure must come before everything else but the title.
  var root = document.documentElement;
  document.body.setAttribute('data-overflow-x', String(root.scrollWidth > root.clientWidth + 1));
  var first = document.querySelector('h1 ~ *:not(h2)');
  document.body.setAttribute('data-first-block', first ? (first.id || first.tagName) : '');
  if (bad > 0) { console.error('specsample report: ' + bad + ' image(s) failed to decode'); }
});
"""

_OUTCOME_CLASS = {
    "pass": "pass",
    "FAIL": "fail",
    "n/c": "nc",
    "ERROR": "error",
    "unavailable": "unavailable",
}


def esc(text: Any) -> str:
    return _html.escape("" if text is None else str(text), quote=True)


def table(headers: list[str], rows: list[list[Any]], cell_class=None) -> str:
    """An HTML table; ``cell_class(value)`` may return a CSS class per body cell."""
    out = ["<table>"]
    if any(headers):
        out += ["<thead><tr>", "".join(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>")
        for v in row:
            cls = cell_class(v) if cell_class else None
            attr = f' class="{cls}"' if cls else ""
            out.append(f"<td{attr}>{esc(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def image(path: Path, alt: str, element_id: str | None = None) -> str:
    """A ``<figure>`` with the PNG at ``path`` embedded as a data: URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    attr = f' id="{esc(element_id)}"' if element_id else ""
    return f'<figure{attr}><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></figure>'


def render_html(
    title: str,
    meta: list[tuple[str, str]],
    sections: list[tuple[str, list[tuple[str, str]]]],
    lead: list[tuple[str, str]] | None = None,
) -> str:
    """Assemble the page.

    Args:
        title: page title.
        meta: ``(label, value)`` rows for the header table (escaped here).
        sections: ``(heading, [(kind, payload), ...])`` where kind is ``"html"`` (trusted markup
            made by this module's helpers), ``"text"`` (escaped paragraph), ``"h2"`` or ``"h3"``.
        lead: items shown between the title and the header table (the headline).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    _items(parts, lead or [])
    parts.append(
        table(["", ""], [[k, v] for k, v in meta]).replace("<table>", '<table class="meta">', 1)
    )
    for heading, items in sections:
        parts.append(f"<h2>{esc(heading)}</h2>")
        _items(parts, items)
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _items(parts: list[str], items: list[tuple[str, str]]) -> None:
    for kind, payload in items:
        if kind == "html":
            # Tables scroll sideways in their own box rather than widening the page.
            wrap = payload.startswith("<table")
            parts.append(f'<div class="scroll">{payload}</div>' if wrap else payload)
        elif kind in ("h2", "h3"):
            parts.append(f"<{kind}>{esc(payload)}</{kind}>")
        else:
            parts.append(f'<p class="note">{esc(payload)}</p>')


def conformance_html(headers: list[str], rows: list[list[str]]) -> str:
    return table(headers, rows, cell_class=lambda v: _OUTCOME_CLASS.get(v))
