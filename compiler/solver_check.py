"""Solver fields that name blobs of the net, checked against its plans (pure Python, no JAX):
`early_stopping.metric` must be a scalar output of the TEST net. Reported as FILE:LINE:COL at
the field, in the file the solver was read from."""

from __future__ import annotations

from netc.spec.errors import did_you_mean

__all__ = ["check_solver"]


def check_solver(spec, solver, test_plan) -> None:
    """Report (in `spec.diagnostics`) a solver field that names no blob of the plans."""
    es = getattr(solver, "early_stopping", None)
    if es is None or test_plan is None:
        return
    names = test_plan.scalar_outputs()
    if es.metric in names:
        return
    diags, base = spec.solver_origin or (spec.diagnostics, ("solver",))
    field = ".".join(str(p) for p in base + ("early_stopping", "metric"))
    have = (
        f"its scalar outputs are {', '.join(names)}"
        if names
        else "it has none: add an Accuracy layer or a loss to the TEST phase"
    )
    diags.error(
        f"{field}: '{es.metric}' is not a scalar output of the TEST net ({have})"
        f"{did_you_mean(es.metric, names)}",
        base + ("early_stopping", "metric"),
    )
    if diags is not spec.diagnostics and diags.items[-1] not in spec.diagnostics.items:
        spec.diagnostics.items.append(diags.items[-1])
