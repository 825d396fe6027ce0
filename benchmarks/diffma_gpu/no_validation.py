"""A Trainer that never validates, for GPU calls that carry no validation data (train_budget.py,
unet_seeds.py): the runs are scored afterwards, elsewhere, with rtgen predict / evaluate."""


def without_validation(trainer, task) -> None:
    """No validation pass (not even after the last epoch) and no best checkpoint during the run: call
    `trainer._save_best(...)` once at the end to write the final weights and config.json."""
    task.val_data = lambda progress=True: []
    trainer.validate = lambda: ({task.selection_metric: float("nan")}, None)
    trainer._improved = lambda value: False
