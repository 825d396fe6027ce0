"""What can be loaded: the registered networks and tasks, and the checkpoints shipped in rtgen (what
`rtgen models` prints and `rtgen.list_models()` returns)."""

from __future__ import annotations

from rtgen.hub import default_model, shipped_models


def catalogue(parameters: bool = True) -> dict[str, list[dict]]:
    """{"models": registered networks, "tasks": registered tasks, "shipped": shipped checkpoints}.

    A network: {"model", "task", "parameters" (at its default config; built to count them, so only
    with `parameters`), "description"}. A task: {"task", "description"}. A shipped checkpoint:
    {"folder" (what `hub:NAME` names), "model", "task", "default" (the default model of its task),
    "data", "trained_on", "description"}."""
    from rtgen.core.source_registry import model_listing, task_listing

    nets, tasks = model_listing(parameters), task_listing()  # read from the source: no network is imported
    shipped = [{"folder": s.folder, "model": s.model, "task": s.task, "default": default_model(s.task) == s.folder,
                "data": s.data, "trained_on": s.trained_on, "description": s.description} for s in shipped_models()]
    return {"models": nets, "tasks": tasks, "shipped": shipped}
