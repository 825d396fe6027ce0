"""The training engine: one trainer with hooks that knows a task, never dataset keys."""
