"""The model table of README.md, generated from the hub manifest and the model cards.

    python -m rtgen.hub.table            rewrite the table in README.md (between the markers)
    python -m rtgen.hub.table --check    exit 1 if README.md's table is not what this writes

Each shipped model's row comes from its manifest entry (`summary`, `task`, `data`, `validation`,
`speed`) and links its model card. Scores whose `validation.source` is "model card" must appear in
that card, so the README cannot drift from the cards; the other scores name the command that measured
them. Only the standard library and `rtgen.hub` are imported: this runs in a fraction of a second.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from rtgen.core.errors import RtgenError
from rtgen.hub import ShippedModel, hub_dir, shipped_models

START = "<!-- model-table:start -->"
END = "<!-- model-table:end -->"
HEADER = ("| model | what it is | task | data | validation scores | s/patient (2-core CPU) |\n"
          "| --- | --- | --- | --- | --- | --- |")
LEGEND = ("Dose and DVH scores are OpenKBP's (mean absolute errors in Gy: lower is better). SSIM and PSNR\n"
          "follow the DiffMa scoring protocol (per-patient 0.5/99.5 percentile normalisation, on the MR's\n"
          "grid: higher is better). The scorecard is DiffKT3D's eq. 9 clinical scorecard (higher is better).\n"
          "Each model name links to its model card. How each row was measured:")


def readme_path() -> Path:
    """README.md of the source tree this module sits in (the table is a development tool)."""
    return Path(__file__).resolve().parents[2] / "README.md"


def _number(v: float) -> str:
    return f"{v:g}"


def _scores(m: ShippedModel) -> str:
    if not m.validation:
        return "not measured"
    return ", ".join(f"{s['metric']} {_number(s['value'])} {s['unit']}" for s in m.validation["scores"])


def _seconds(m: ShippedModel) -> str:
    if not m.speed:
        return "not measured"
    s = m.speed["seconds_per_patient"]
    text = "-".join(_number(x) for x in s) if isinstance(s, list) else _number(s)
    return f"about {text}" if m.speed.get("approximate") else text


def _card(m: ShippedModel, hub: Path) -> Path:
    return hub / m.folder / "MODEL_CARD.md"


def card_mismatches(models: list[ShippedModel], hub: Path) -> list[str]:
    """What the manifest says that its model cards do not: a missing card, or a score taken from a
    card ("source": "model card") whose value the card does not print."""
    problems = []
    for m in models:
        card = _card(m, hub)
        if not card.is_file():
            problems.append(f"{m.folder}: no model card ({card.name})")
            continue
        if not m.validation or m.validation.get("source") != "model card":
            continue
        text = card.read_text(encoding="utf-8")
        for s in m.validation["scores"]:
            value = _number(s["value"])
            if not re.search(rf"(?<![\d.]){re.escape(value)}{'0*' if '.' in value else ''}(?!\d)", text):  # 1.9: 1.900
                problems.append(f"{m.folder}: {s['metric']} {value} {s['unit']} is not in its model card")
    return problems


def render(models: list[ShippedModel] | None = None, hub: Path | None = None) -> str:
    """The table and its notes, as they stand between the markers (markers excluded)."""
    models = shipped_models() if models is None else models
    hub = hub_dir() if hub is None else hub
    problems = card_mismatches(models, hub)
    if problems:
        raise RtgenError("the hub manifest disagrees with the model cards: " + "; ".join(problems))
    rows = [HEADER]
    for m in models:
        card = f"rtgen/hub/{m.folder}/MODEL_CARD.md"
        cells = [f"[`hub:{m.folder}`]({card})", m.summary or m.description, f"`{m.task}`", m.data,
                 _scores(m), _seconds(m)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    machines = {m.speed["machine"] for m in models if m.speed}
    notes = ["", LEGEND, ""]
    for m in models:
        parts = []
        if m.validation:
            parts.append(f"scores on {m.validation['on']} ({m.validation['source']}: `{m.validation['command']}`)")
        if m.speed:
            where = "" if len(machines) == 1 else f" on a {m.speed['machine']}"
            parts.append(f"seconds: {m.speed['measured']}{where}")
        notes.append(f"- `hub:{m.folder}`: " + "; ".join(parts) + ".")
    if len(machines) == 1:
        notes += ["", f"Every time above was measured on a {machines.pop()}."]
    return "\n".join(rows + notes)


def replace_table(text: str, table: str) -> str:
    """`text` with what stands between the markers replaced by `table`."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise RtgenError(f"the README has no model table markers ({START} ... {END})")
    return text[: i + len(START)] + "\n" + table + "\n" + text[j:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rtgen.hub.table", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is stale; write nothing")
    ap.add_argument("--readme", type=Path, default=None, help="the README to update (default: the source tree's)")
    args = ap.parse_args(argv)
    path = args.readme or readme_path()
    try:
        text = path.read_text(encoding="utf-8")
        new = replace_table(text, render())
    except (OSError, RtgenError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{path}: the model table is stale; run `python -m rtgen.hub.table`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: model table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
