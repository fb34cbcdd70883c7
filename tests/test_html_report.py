"""``adbench-report format=html`` opened in a real browser (Debian's headless chromium): the page loads without
console errors, its tables sort on a header click, every embedded image (plots, failure gallery) decodes; the
gallery holds the worst false negatives / positives the per-image table implies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adbench.gallery import f1_threshold, worst_cases
from adbench.metrics.per_image import read_per_image

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# installed before the page's own scripts: every console.error and error event (scripts, images) is recorded
CATCH = """<script>window.__errors=[];const __e=console.error;console.error=(...a)=>{__errors.push(a.join(' '));__e(...a)};
window.addEventListener('error',ev=>__errors.push(String(ev.message||(ev.target&&ev.target.tagName)||ev.type)),true);</script>"""
# after them, once the page has loaded (synchronously, so --dump-dom never races it): sort the table holding COLUMN by it
# (twice), count the images that decoded (complete, with a size), write the findings into the page
PROBE = """<script>window.addEventListener('load',()=>{const r={errors:null};
const th=[...document.querySelectorAll('table.sortable th')].find(h=>h.textContent.trim()==='COLUMN');
const col=()=>{const i=[...th.parentNode.children].indexOf(th);return [...th.closest('table').tBodies[0].rows].map(x=>x.cells[i].textContent)};
r.before=col();th.click();r.ascending=col();th.click();r.descending=col();
const imgs=[...document.images];r.images=imgs.length;
r.decoded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;
r.sizes=imgs.map(i=>i.naturalWidth*i.naturalHeight);r.gallery=document.querySelectorAll('.case').length;
r.errors=window.__errors;const pre=document.createElement('pre');pre.id='probe';pre.textContent=JSON.stringify(r);document.body.appendChild(pre);});</script>"""


def browse(page: Path, column: str, tmp_path: Path) -> tuple[dict, list[str]]:
    """Open a probed copy of ``page`` in headless chromium: the probe's findings and the browser's console lines."""
    text = page.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + CATCH, 1).replace("</body>", PROBE.replace("COLUMN", column) + "</body>", 1))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")), console


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Three runs on synthetic data (PaDiM with its model saved: gallery maps) and their HTML report with galleries."""
    root = tmp_path_factory.mktemp("html")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["method=padim", "save_model=padim.safetensors"], ["method=patchcore_1pct"], ["method=gaussian_ad"]):
        done = subprocess.run([sys.executable, "-m", "adbench", "dataset=synthetic", "dataset.root=data", "figures=0", *args],
                              cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "adbench.report", "format=html", "gallery=true"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return root / "results"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
def test_report_renders_sorts_and_decodes_in_chromium(results, tmp_path) -> None:
    page = results / "report.html"
    assert "<link" not in page.read_text() and 'src="http' not in page.read_text()  # self-contained
    probe, console = browse(page, "model img/s", tmp_path)
    assert probe["errors"] == [] and console == [], (probe["errors"], console)
    values = [float(v) for v in probe["before"]]
    assert len(values) == 3
    assert [float(v) for v in probe["ascending"]] == sorted(values) and [float(v) for v in probe["descending"]] == sorted(values, reverse=True)
    assert probe["images"] >= 5 and probe["decoded"] == probe["images"] and min(probe["sizes"]) > 0  # plots, CD-free here, gallery
    assert probe["gallery"] >= 1


def test_gallery_shows_the_worst_cases_of_the_table(results) -> None:
    (record_file,) = (results / "records").glob("*_padim_*.json")
    record = json.loads(record_file.read_text())
    table = read_per_image(record_file.with_name(record["per_image"]))
    threshold = json.loads(record_file.read_text())["saved_model"]["threshold"]["image"]
    negatives, positives = worst_cases(table, threshold, 3)
    assert (negatives.label == 1).all() and (negatives.score < threshold).all() and (positives.score >= threshold).all()
    text = (results / "report.html").read_text()
    assert f"Threshold {threshold:.4g}" in text
    for path in [*negatives.path, *positives.path]:
        assert path in text
    # the F1 threshold: no other threshold gives a higher F1 on these scores (checked over every distinct score)
    labels, scores = table.label.to_numpy(), table.score.to_numpy()
    def f1(t: float) -> float:
        tp, fp, fn = ((scores >= t) & (labels == 1)).sum(), ((scores >= t) & (labels == 0)).sum(), ((scores < t) & (labels == 1)).sum()
        return 2 * tp / max(2 * tp + fp + fn, 1)
    assert f1(f1_threshold(labels, scores)) == pytest.approx(max(f1(t) for t in np.unique(scores)))


def test_markdown_tables_and_escaped_bars_become_html() -> None:
    from adbench.results.html import markdown_to_html

    out = markdown_to_html("## A · b\n\n| m | f |\n|:--|:--|\n| **x** | \\|X\\| `c` |\n\n- item", Path("."))
    assert "<h2>A · b</h2>" in out and "<td><b>x</b></td><td>|X| <code>c</code></td>" in out and "<li>item</li>" in out
