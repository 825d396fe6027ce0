"""The README stays short, true and in step with the code: its model table is what `rtgen.hub.table`
writes from the hub manifest and the model cards, its links lead to files of the repository, and it
speaks of the project alone. All in-process and fast (well under a second in all)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from rtgen.hub import hub_dir, shipped_models
from rtgen.hub import table as model_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_model_table_is_what_the_generator_writes():
    text = readme_text()
    assert model_table.replace_table(text, model_table.render()) == text, (
        "the README's model table is stale: run `python -m rtgen.hub.table`")


def test_every_shipped_model_is_in_the_readme_table():
    table = readme_text().split(model_table.START)[1].split(model_table.END)[0]
    for m in shipped_models():
        assert f"[`hub:{m.folder}`](rtgen/hub/{m.folder}/MODEL_CARD.md)" in table


def test_every_shipped_model_has_the_facts_of_its_table_row():
    for m in shipped_models():
        assert m.summary and m.task and m.data, m.folder
        assert m.validation and m.validation["on"] and m.validation["command"].strip(), m.folder
        assert m.validation["source"] in ("model card", "benchmark"), m.folder
        for s in m.validation["scores"]:
            assert s["metric"] and s["unit"] in ("Gy", "%", "dB") and isinstance(s["value"], (int, float)), m.folder
        seconds = m.speed["seconds_per_patient"]
        assert all(x > 0 for x in (seconds if isinstance(seconds, list) else [seconds])), m.folder
        assert "2-core" in m.speed["machine"] and m.speed["measured"], m.folder
        for script in re.findall(r"python (\S+\.py)", m.validation["command"]):
            assert (ROOT / script).is_file(), f"{m.folder}: its scores' command runs {script}, which is gone"


def test_the_manifest_scores_taken_from_model_cards_are_in_those_cards():
    assert model_table.card_mismatches(shipped_models(), hub_dir()) == []


def test_a_score_that_its_card_does_not_print_is_refused(tmp_path):
    card = tmp_path / "m" / "MODEL_CARD.md"
    card.parent.mkdir()
    card.write_text("Dose score: 3.1035 Gy; DVH score 1.945 Gy.\n")
    m = shipped_models()[0]
    fake = dataclasses.replace(m, folder="m", validation={
        **m.validation, "source": "model card", "scores": [{"metric": "dose score", "value": 3.103, "unit": "Gy"},
                                                           {"metric": "DVH score", "value": 1.945, "unit": "Gy"}]})
    assert model_table.card_mismatches([fake], tmp_path) == ["m: dose score 3.103 Gy is not in its model card"]


def test_the_table_tool_check_mode(tmp_path, capsys):
    stale = tmp_path / "README.md"
    stale.write_text(f"intro\n{model_table.START}\nold table\n{model_table.END}\nend\n")
    assert model_table.main(["--check", "--readme", str(stale)]) == 1
    assert "old table" in stale.read_text()  # --check writes nothing
    assert model_table.main(["--readme", str(stale)]) == 0
    assert model_table.main(["--check", "--readme", str(stale)]) == 0
    text = stale.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "hub:lightgbm_dose_openkbp" in text
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("no markers\n")
    assert model_table.main(["--check", "--readme", str(unmarked)]) == 2
    assert "no model table markers" in capsys.readouterr().err


def test_the_readme_is_at_most_300_lines():
    assert len(readme_text().splitlines()) <= 300


def _links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # links only count outside code blocks
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_the_readme_links_point_to_files_that_exist():
    links = _links(readme_text())
    assert links, "the README links nothing"
    missing = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path = link.split("#")[0]
        if path and not (ROOT / path).exists():
            missing.append(link)
        if link.startswith("#"):  # an anchor of the README itself: a heading must make it
            headings = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                        for h in re.findall(r"^#+ (.+)$", readme_text(), re.MULTILINE)}
            if link[1:] not in headings:
                missing.append(link)
    assert missing == [], f"README links to nothing: {missing}"


@pytest.mark.parametrize("pattern, what", [
    (r"(?<![\w&/`])#\d+\b", "an issue number"),
    (r"\bissues?\s+\d+", "an issue number"),
    (r"(?<![\w.])/(?:tmp|work|home|root|mnt|scratch)/", "a machine path"),
    (r"\.\./shared|unpack\.py", "a machine path"),
    (r"\b(?:sessions?|lent|agents?)\b", "workplace language"),
])
def test_the_readme_speaks_of_the_project_alone(pattern, what):
    hits = re.findall(pattern, readme_text(), re.IGNORECASE)
    assert hits == [], f"the README names {what}: {hits}"


def test_the_release_files_agree_on_the_version():
    import yaml

    import rtgen

    version = rtgen.__version__
    assert re.search(rf'^version = "{re.escape(version)}"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and str(cff["version"]) == version and cff["license"] == "MIT"
    titles = " ".join(r["title"] for r in cff["references"])
    for paper in ("Mamba V2 into UNet", "MD-Dose", "Soft Masked Mamba Diffusion", "Any2Any 3D", "OpenKBP"):
        assert paper in titles
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE), (
        f"CHANGELOG.md has no section for {version}")
    assert "MIT License" in (ROOT / "LICENSE").read_text()
