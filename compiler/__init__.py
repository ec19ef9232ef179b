"""netc's compiler: one unit per layer type (shape rule, parameter declaration, JAX lowering),
the graph walker, `plan()` and `lower()`. Importing this package does not import JAX."""
