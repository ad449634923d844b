"""``report.html``: plots, tables, failures, offline, and what a browser shows."""

from __future__ import annotations

import copy
import html
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import teachsim
from teachsim import registry
from teachsim.platform.judge import ALWAYS as METRICS
from teachsim.results.report import fmt
from tiny import TINY, cli as _cli

BOOM_PLUGIN = '''
import teachsim
from teachsim.protocols.base import Protocol


class Boom(Protocol):
    """A protocol whose student always crashes."""

    def student_turn(self, student, inbox, ctx):
        raise RuntimeError("boom in the report <test> & more")


teachsim.register_protocol("boom-report", Boom)
'''

LABELS = ["passive", "passive(batch=5)"]
BLUE = (0x1F, 0x77, 0xB4)            # tab10's first colour: the first protocol's line
ALPHA = 0.18                         # the band's alpha in plot_metric


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny experiment swept over task.dim = [4, 6], with a third protocol that always fails."""
    base = tmp_path_factory.mktemp("report")
    (base / "boom_report.py").write_text(BOOM_PLUGIN)
    with registry.scoped():
        registry.load_plugin(str(base / "boom_report.py"))
        cfg = copy.deepcopy(TINY)
        cfg["description"] = "Does a smaller <batch> help?"
        cfg["sweep"] = {"task.dim": [4, 6]}
        cfg["protocols"].append({"name": "boom-report"})
        run = teachsim.run(cfg, out=base / "run", executor="serial", progress=False)
    assert not (run.dir / "report.html").exists()          # teachsim.run() does not build it
    started = time.perf_counter()
    path = run.report()
    seconds = time.perf_counter() - started
    return run, path, seconds


def _sections(page: str) -> dict[str, str]:
    """h2 title -> the html up to the next h2."""
    parts = re.split(r"<h2>(.*?)</h2>", page)
    return {html.unescape(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def _section(page: str, start: str) -> str:
    hits = [body for title, body in _sections(page).items() if title.startswith(start)]
    assert len(hits) == 1, (start, list(_sections(page)))
    return hits[0]


def _cells(table_html: str) -> list[list[str]]:
    """The body rows of the tables in some html, as text cells."""
    rows = [[html.unescape(re.sub(r"<.*?>", "", c, flags=re.S)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table_html, re.S)]
    return [r for r in rows if r]


# -- the page -----------------------------------------------------------------------------

def test_report_files_and_images(swept):
    run, path, seconds = swept
    assert path == run.dir / "report.html" and path.is_file()
    assert seconds < 10, f"report took {seconds:.1f} s"
    for metric in METRICS:
        assert (run.dir / "plots" / f"{metric}.png").is_file(), metric
    page = path.read_text()
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]+)"', page)
    assert len(srcs) == len(METRICS) + 1                    # the curves and the dimension sweep
    for src in srcs:
        assert src.startswith("plots/") and (run.dir / src).is_file(), src
    import matplotlib.image

    img = matplotlib.image.imread(run.dir / "plots" / "clean_acc.png")
    assert img.shape[0] > 200 and img.shape[1] > 400


def test_report_is_offline_and_escaped(swept):
    run, path, _ = swept
    page = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    # the header: name, question, counts, seeds, budgets, judge, the resolved config
    assert "<h1>tiny</h1>" in page
    assert "Does a smaller &lt;batch&gt; help?" in page and "<batch>" not in page
    assert "8 finished, 4 failed" in page
    assert "norm l2, eps 2.0, attacks pgd, strong_radius 4.0, test_points 100" in page
    assert "<details>" in page and html.escape((run.dir / "config.toml").read_text()) in page
    assert f"teachsim report {html.escape(str(run.dir))}" in page and teachsim.__version__ in page


def test_auc_table_matches_run_auc(swept):
    run, path, _ = swept
    section = _section(path.read_text(), "AUC")
    aucs = run.auc()
    for variant in ("task.dim=4", "task.dim=6"):
        body = section.split(f"<h3>{variant}</h3>")[1].split("</table>")[0]
        header = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", body)]
        assert header == ["protocol", *METRICS]
        rows = {r[0]: r[1:] for r in _cells(body)}
        assert sorted(rows) == sorted(LABELS)               # the failing protocol has no scores
        for label in LABELS:
            for metric, cell in zip(METRICS, rows[label]):
                want = aucs[(aucs["variant"] == variant) & (aucs["protocol"] == label) & (aucs["metric"] == metric)]
                assert cell == fmt(want["auc"].iloc[0]), (variant, label, metric)


def test_budget_to_table(swept):
    run, path, _ = swept
    section = _section(path.read_text(), "Budget to reach 0.9")
    for variant in ("task.dim=4", "task.dim=6"):
        rows = {r[0]: r[1:] for r in _cells(section.split(f"<h3>{variant}</h3>")[1].split("</table>")[0])}
        assert sorted(rows) == sorted(LABELS)
        for metric, col in zip(METRICS, zip(*rows.values())):
            table = run.budget_to(metric, 0.9)
            table = table[table["variant"] == variant]
            values = table.set_index("protocol").loc[list(rows), "budget_to"]
            want = ["never" if np.isinf(v) else f"{v:g}" for v in values]
            assert list(col) == want, metric


def test_dimension_sweep(swept):
    run, path, _ = swept
    assert (run.dir / "plots" / "budget_to_task.dim.png").is_file()
    section = _section(path.read_text(), "Budget to reach strong_robust_acc")
    assert '<img src="plots/budget_to_task.dim.png"' in section
    header = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", section)]
    assert header == ["protocol", "task.dim=4", "task.dim=6"]
    rows = {r[0]: r[1:] for r in _cells(section)}
    assert sorted(rows) == sorted(LABELS)
    table = run.budget_to("strong_robust_acc", 0.9)
    for label, cells in rows.items():
        for dim, cell in zip((4, 6), cells):
            v = table[(table["protocol"] == label) & (table["variant"] == f"task.dim={dim}")]["budget_to"].iloc[0]
            assert cell == ("never" if np.isinf(v) else f"{v:g}")


def test_failed_episodes_flags_and_no_matrix(swept):
    run, path, _ = swept
    page = path.read_text()
    failed = _section(page, "Failed episodes")
    assert "boom in the report &lt;test&gt; &amp; more" in failed and "<pre>" in failed
    rows = _cells(failed)
    assert len(rows) == 4 and {r[1] for r in rows} == {"boom-report"}
    assert {r[2] for r in rows} == {"task.dim=4", "task.dim=6"} and {r[3] for r in rows} == {"0", "1"}
    flags = _section(page, "Judge sanity flags")
    raised = run.flags
    if (raised["value"] > 0).any():
        assert "<table>" in flags
    else:
        assert "no sanity flags raised" in flags
    assert not any(t.startswith("Train method") for t in _sections(page))


def test_target_from_argument_and_config(swept, tmp_path):
    run, _, _ = swept
    copy_dir = tmp_path / "run"
    shutil.copytree(run.dir, copy_dir)
    page = teachsim.open_run(copy_dir).report(target=0.5).read_text()
    assert "Budget to reach 0.5" in page and "strong_robust_acc &ge; 0.5" in page
    cfg = (copy_dir / "config.toml").read_text() + '\n[report]\ntarget = 0.75\nmetric = "clean_acc"\n'
    (copy_dir / "config.toml").write_text(cfg)
    # and a raised sanity flag is listed per protocol
    import sqlite3

    con = sqlite3.connect(copy_dir / "results.sqlite")
    with con:
        con.execute("UPDATE flags SET value = 0.25 WHERE episode_id = 1 AND flag = 'zero_grad_share'")
    con.close()
    page = teachsim.open_run(copy_dir).report().read_text()
    assert "Budget to reach 0.75" in page and "Budget to reach clean_acc &ge; 0.75 vs task.dim" in page
    rows = _cells(_section(page, "Judge sanity flags"))
    assert rows == [["passive", "zero_grad_share", "1", "0.250", "0.250"]]


# -- the command --------------------------------------------------------------------------

def test_cli_report(swept, tmp_path):
    run, _, _ = swept
    copy_dir = tmp_path / "run"
    shutil.copytree(run.dir, copy_dir)
    (copy_dir / "report.html").unlink()
    shutil.rmtree(copy_dir / "plots")
    proc = _cli("report", str(copy_dir), "--target", "0.8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(copy_dir / "report.html")
    assert "Budget to reach 0.8" in (copy_dir / "report.html").read_text()
    assert (copy_dir / "plots" / "strong_robust_acc.png").is_file()


def test_cli_report_on_a_non_run_dir_is_exit_2(tmp_path):
    proc = _cli("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("teachsim: error: ") and "not a run directory" in lines[0]
    assert not (tmp_path / "report.html").exists()


def test_cli_report_unknown_judge_is_exit_2(swept, capsys):
    from teachsim.cli import main

    assert main(["report", str(swept[0].dir), "--judge", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teachsim: error: --judge") and "'nope'" in err and len(err.splitlines()) == 1


# -- the attack matrix --------------------------------------------------------------------

def test_attack_matrix_section(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["seeds"] = [0]
    cfg["budgets"] = [0, 10]
    cfg["protocols"] = cfg["protocols"][:1]
    cfg["judge"]["attack_sets"] = [["fgsm"]]
    run = teachsim.run(cfg, out=tmp_path / "run", executor="serial", progress=False)
    page = run.report().read_text()
    section = _section(page, "Train method x test attack")
    assert section.count("<table>") == 2
    assert "<h3>lp_robust_acc</h3>" in section and "<h3>weak_robust_acc</h3>" in section
    assert "<th>default</th>" in section and "<th>fgsm/l2/2</th>" in section
    rows = _cells(section.split("<h3>lp_robust_acc</h3>")[1].split("</table>")[0])
    mat = run.attack_matrix("lp_robust_acc", judges=run.judges)
    assert rows == [[str(idx), *[fmt(v) for v in row]] for idx, row in mat.iterrows()]
    # one seed: no interval, the curves are plain lines
    assert all((tmp_path / "run" / "plots" / f"{m}.png").is_file() for m in METRICS)


# -- what a browser shows -----------------------------------------------------------------

def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _screenshot(browser: str, page: Path, tmp: Path) -> np.ndarray:
    import matplotlib.image

    shot = tmp / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp / 'profile'}", "--hide-scrollbars", "--window-size=1200,3000",
                           f"--screenshot={shot}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = matplotlib.image.imread(shot)
    return np.round(img[..., :3] * 255).astype(int)


def _near(img: np.ndarray, rgb: tuple[float, float, float], tol: float = 12) -> int:
    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_browser_shows_the_plots(swept, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("TEACHSIM_REQUIRE_BROWSER") == "1":
            pytest.fail("TEACHSIM_REQUIRE_BROWSER=1 but no chromium / chromium-browser on PATH")
        pytest.skip("no chromium or chromium-browser on PATH (set TEACHSIM_REQUIRE_BROWSER=1 to require it)")
    run, path, _ = swept
    band = tuple(255 - ALPHA * (255 - c) for c in BLUE)     # the band drawn over white

    img = _screenshot(browser, path, tmp_path / "with")
    line_px, band_px = _near(img, BLUE), _near(img, band, tol=6)
    assert line_px > 1500, line_px
    assert band_px > 5000, band_px

    bare = tmp_path / "bare"                                 # the same page without its plots
    bare.mkdir()
    shutil.copy(path, bare / "report.html")
    img = _screenshot(browser, bare / "report.html", tmp_path / "without")
    assert _near(img, BLUE) < 50 and _near(img, band, tol=6) < 500      # measured: 0 and 28


# -- run and bench build it ----------------------------------------------------------------

def _small_toml(tmp_path: Path, *protocols: str) -> Path:
    import tomli_w

    cfg = copy.deepcopy(TINY)
    cfg["seeds"], cfg["budgets"] = [0], [0, 10]
    cfg["protocols"] = [{"name": p} for p in protocols]
    path = tmp_path / "small.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def test_run_builds_the_report_even_when_episodes_fail(tmp_path):
    (tmp_path / "boom_report.py").write_text(BOOM_PLUGIN)
    _small_toml(tmp_path, "passive", "boom-report")
    proc = _cli("--plugin", "boom_report.py", "run", "small.toml", "--out", "run", "--quiet", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr                 # unchanged: some episodes failed
    assert "Traceback" not in proc.stderr
    assert f"report: {Path('run') / 'report.html'}" in proc.stdout
    page = (tmp_path / "run" / "report.html").read_text()
    assert "boom in the report &lt;test&gt; &amp; more" in _section(page, "Failed episodes")


def test_run_no_report(tmp_path, capsys):
    from teachsim.cli import main

    cfg = _small_toml(tmp_path, "passive")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "report:" not in out and not (tmp_path / "run" / "report.html").exists()
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0   # nothing to run: report only
    assert f"report: {tmp_path / 'run' / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "run" / "report.html").is_file()
