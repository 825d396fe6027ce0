"""`rtgen models`: every registered network and task, and the shipped checkpoints."""

from __future__ import annotations

import typer
from rich.table import Table

from rtgen.cli.app import app, out, user_errors


@app.command("models")
@user_errors
def models(
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
):
    """List registered networks (parameters at their default config), tasks, and shipped checkpoints."""
    import json

    from rtgen.inference.catalogue import catalogue

    # read from the source and the recorded parameter counts: no network is imported (as rtgen.list_models())
    listing = catalogue()
    nets, tasks, shipped = listing["models"], listing["tasks"], listing["shipped"]
    if json_out:
        print(json.dumps(listing, indent=2))
        return
    t = Table(title="Registered networks (parameters at the default config)", title_justify="left")
    for c in ("model", "task", "parameters", "description"):
        t.add_column(c, justify="right" if c == "parameters" else "left")
    for n in nets:
        t.add_row(n["model"], n["task"], f"{n['parameters'] / 1e6:.2f} M", n["description"])
    out.print(t)
    t = Table(title="Tasks", title_justify="left")
    t.add_column("task")
    t.add_column("description")
    for x in tasks:
        t.add_row(x["task"], x["description"])
    out.print(t)
    t = Table(title="Shipped checkpoints (rtgen/hub)", title_justify="left")
    for c in ("folder", "model", "task", "default", "data", "trained on"):
        t.add_column(c)
    for s in shipped:
        t.add_row(s["folder"], s["model"], s["task"], "yes" if s["default"] else "", s["data"], s["trained_on"])
    out.print(t)
