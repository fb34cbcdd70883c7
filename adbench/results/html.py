"""``adbench-report format=html``: the leaderboard as one self-contained HTML page, ``report.html``.

The page is rendered from the markdown leaderboard and its plots as ``adbench-report`` writes them (so both
say the same): headings, paragraphs and lists, every table with sortable columns (click a header; numbers sort
by value, n/a and – last), every plot (trade-offs, critical-difference diagrams) embedded as a PNG data URI,
and optional failure galleries (:mod:`adbench.gallery`). No external file, script or font is referenced.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ..files import atomic_write_text

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12.5px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
img{max-width:100%}figure{display:inline-block;margin:4px;vertical-align:top;text-align:center;font-size:11px}
figure img{width:160px;height:160px;image-rendering:pixelated;border:1px solid #999}
.case{display:inline-block;border:1px solid #ddd;margin:4px;padding:4px}
"""
# sorts a table by the clicked column: numbers by value (the number a cell starts with after marks such as ↓ ≈ **),
# text alphabetically, n/a and – last
SCRIPT = """
function cellKey(td){const t=td.textContent.trim();const m=t.replace(/^[^\\w-]+/,'').match(/^-?\\d+(\\.\\d+)?/);
 return m?[0,parseFloat(m[0])]:(t==='n/a'||t==='–'||t==='')?[2,0]:[1,t.toLowerCase()];}
function sortBy(th){const table=th.closest('table'),body=table.tBodies[0],i=[...th.parentNode.children].indexOf(th);
 const up=th.getAttribute('aria-sort')!=='ascending';
 table.querySelectorAll('th').forEach(h=>h.removeAttribute('aria-sort'));th.setAttribute('aria-sort',up?'ascending':'descending');
 const rows=[...body.rows].map(r=>[cellKey(r.cells[i]),r]);
 rows.sort((a,b)=>{const x=a[0],y=b[0];if(x[0]!==y[0])return x[0]-y[0];if(x[0]===2)return 0;
  const c=x[1]<y[1]?-1:x[1]>y[1]?1:0;return up?c:-c;});
 rows.forEach(r=>body.appendChild(r[1]));}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
"""


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def inline(text: str) -> str:
    """Escaped text with the markdown leaderboard's inline marks: **bold**, `code`."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _cells(line: str) -> list[str]:
    """A pipe-table row's cells (``\\|`` is a literal bar inside a cell)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def table_html(lines: list[str]) -> str:
    """A pipe table (header, separator, rows) as a sortable HTML table."""
    head = "".join(f"<th>{inline(c)}</th>" for c in _cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in _cells(row)) + "</tr>" for row in lines[2:])
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def markdown_to_html(text: str, folder: Path) -> str:
    """The leaderboard's markdown (headings, paragraphs, lists, pipe tables, images relative to ``folder``) as HTML."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(table_html(block))
            continue
        if match := re.fullmatch(r"(#{1,4}) (.*)", line):
            level = len(match.group(1))
            out.append(f"<h{level}>{inline(match.group(2))}</h{level}>")
        elif match := re.fullmatch(r"!\[(.*?)\]\((.*?)\)", line.strip()):
            image = folder / match.group(2)
            alt = html.escape(match.group(1))
            out.append(f'<p><img alt="{alt}" src="{data_uri(image)}"></p>' if image.is_file() else f"<p>[missing plot {alt}]</p>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def page(body: str, title: str = "adbench leaderboard") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n<script>{SCRIPT}</script></body></html>\n")


def write_html(markdown_file: Path, output: Path, galleries: list[str] | None = None) -> Path:
    """``output``: the markdown leaderboard ``markdown_file`` (and the plots it links) as one HTML page, the
    ``galleries`` (HTML fragments) appended; without galleries a line says how to get them."""
    body = markdown_to_html(Path(markdown_file).read_text(), Path(markdown_file).parent)
    body += "\n<h2>Failure galleries</h2>\n"
    if galleries:
        body += "\n".join(galleries)
    else:
        body += ("<p>Not included: galleries embed test images, and the datasets' licences (MVTec AD: CC BY-NC-SA 4.0) "
                 "do not allow redistributing them in this repository. Generate them locally with "
                 "<code>adbench-report format=html gallery=true</code> where the data is present.</p>")
    return atomic_write_text(output, page(body))
