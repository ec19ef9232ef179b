"""netc runtime: trainer, solver, data, checkpoints, export (imports JAX)."""
