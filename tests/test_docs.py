"""The documentation site builds with `mkdocs build --strict` (a broken link, a missing page or a stale
API name fails), every page that others link to exists, and nothing the repository says speaks of
issue numbers, one machine's paths or borrowed hardware."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The pages whose paths are fixed, so that the README, the code and each other can link to them.
PAGES = [
    "index.md", "install.md", "quickstart.md", "data.md", "dicom.md", "cli.md", "configs.md", "api.md",
    "models/index.md", "models/lightgbm_dose.md", "models/mamba_unet_v2.md", "models/md_dose.md",
    "models/diffma.md", "models/diffkt3d.md", "evaluation.md", "report.md", "extending.md",
    "internals/architecture.md", "internals/ssm.md", "internals/diffusion.md", "benchmarks.md",
    "reports/index.md", "changelog.md",
]
GENERATED = {"cli.md", "configs.md"}  # written by docs/_hooks/generate.py at build time
REPORT_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}-[a-z0-9]+(-[a-z0-9]+)*\.md$")


def test_every_fixed_page_exists():
    missing = [p for p in PAGES if p not in GENERATED and not (ROOT / "docs" / p).is_file()]
    assert not missing, f"docs/ lacks {missing}"
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(p in nav for p in PAGES), [p for p in PAGES if p not in nav]


def test_reports_are_dated_and_say_where_and_how_they_were_measured():
    reports = sorted((ROOT / "docs" / "reports").glob("*.md"))
    dated = [r for r in reports if r.name != "index.md"]
    assert dated, "docs/reports holds no report"
    index = (ROOT / "docs" / "reports" / "index.md").read_text()
    nav = (ROOT / "mkdocs.yml").read_text()
    for r in dated:
        assert REPORT_NAME.match(r.name), f"{r.name}: name a report YYYY-MM-DD-<slug>.md"
        assert f"({r.name})" in index, f"docs/reports/index.md does not list {r.name}"
        assert f"reports/{r.name}" in nav, f"mkdocs.yml's nav does not list reports/{r.name}"
        head = r.read_text()[:3000].lower()
        for word in ("date", "commit", "machine"):
            assert word in head, f"{r.name}: its head must give the {word}"


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    for page in PAGES:
        built = tmp_path / "site" / (page[:-3] + "/index.html" if not page.endswith("index.md") else page[:-3] + ".html")
        assert built.is_file(), f"{page} was not built"
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "rtgen train" in cli and "rtgen predict" in cli and "--patients" in cli
    configs = (tmp_path / "site" / "configs" / "index.html").read_text()
    assert "batch_size" in configs and "lightgbm_dose" in configs


# ------------------------------------------------------------------------ what the repository says

SCANNED = ["README.md", "docs", "rtgen", "configs", "benchmarks"]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".toml", ".txt", ".sh", ".cfg", ".ini", ".html", ".css"}
FORBIDDEN = [
    (re.compile(r"\bissues?\s*#\s*\d+", re.I), "an issue number"),
    (re.compile(r"(?<![\w&#/])#1[0-9]\b"), "an issue number"),
    (re.compile(r"/tmp/okbp"), "one machine's data path"),
    (re.compile(r"\.\./shared\b"), "one machine's data path"),
    (re.compile(r"/work/(okbp|main)\b"), "one machine's path"),
    (re.compile(r"\blent\b", re.I), "lent-hardware language"),
    (re.compile(r"\blease[sd]?\b", re.I), "lent-hardware language"),
    (re.compile(r"\bdevice[- ]time\b", re.I), "lent-hardware language"),
]


def _text_files():
    for entry in SCANNED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if f.suffix not in TEXT_SUFFIXES or "__pycache__" in f.parts or f.stat().st_size > 512 * 1024:
                continue
            yield f


def test_nothing_speaks_of_issue_numbers_machine_paths_or_lent_hardware():
    found = []
    for f in _text_files():
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for pattern, what in FORBIDDEN:
                m = pattern.search(line)
                if m:
                    found.append(f"{f.relative_to(ROOT)}:{n}: {what}: {m.group(0)!r}")
                    break
    assert not found, f"{len(found)} lines speak of what is not the project:\n" + "\n".join(found[:60])
