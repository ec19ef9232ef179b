"""Loading a spec (and a solver) into one run context: the parsed spec, its solver, and its plans.

Every command starts here. `load_spec` reports every problem at once as FILE:LINE:COL lines
(a RunError), as `netc check` does. JAX is not imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from netc.runtime.errors import RunError

__all__ = ["RunContext", "load_context", "load_spec", "with_source", "diag_lines"]


def diag_lines(diags) -> list[str]:
    return [d.format() for d in diags.sorted()]


def _read_solver_file(solver_path: str) -> tuple[Any, Any, tuple]:
    """(solver, its Diagnostics, its path in the document) from a separate solver file
    (--solver); raises RunError on an error."""
    from netc.spec.errors import Diagnostics
    from netc.spec.net import read_document, validate_solver

    if not os.path.exists(solver_path):
        raise RunError(f"{solver_path}: no such file")
    diags = Diagnostics(solver_path)
    raw = read_document(solver_path, diags)
    solver = None
    if raw is None and not diags.errors:
        diags.error("the file is empty: expected SolverParameter fields (base_lr, ...)")
    base: tuple = ()
    if isinstance(raw, dict) and "solver" in raw and isinstance(raw["solver"], dict) \
            and "layers" not in raw:
        base = ("solver",)
        solver = validate_solver(raw["solver"], diags, base, "solver")
    elif raw is not None:
        solver = validate_solver(raw, diags, (), "")
    if diags.errors:
        raise RunError(lines=diag_lines(diags))
    return solver, diags, base


def load_spec(path: str, solver_path: str | None = None, *, warnings: list[str] | None = None):
    """Parse `path` (a net, or a solver file naming its net) and optionally a separate solver
    file (`--solver`), which overrides the spec's own `solver:` section. Returns (spec, solver);
    raises RunError with FILE:LINE:COL lines on any error. The solver file's warnings are
    appended to `warnings` (the spec's stay in spec.diagnostics)."""
    from netc.compiler.catalogue import layer_models
    from netc.spec.net import parse_spec

    if not os.path.exists(path):
        raise RunError(f"{path}: no such file")
    spec = parse_spec(path, layer_models())
    if spec.diagnostics.errors:
        # Report every problem at once, as `netc check` does: plan what did validate too.
        from netc.compiler.plan import plan_all_phases

        if spec.layers:
            plan_all_phases(spec)
        raise RunError(lines=diag_lines(spec.diagnostics))
    solver = spec.solver
    if solver_path is not None:
        solver, diags, base = _read_solver_file(solver_path)
        spec.solver_origin = (diags, base)
        if warnings is not None:
            warnings.extend(diag_lines(diags))
    return spec, solver


def net_state(phase: str, solver=None, spec=None):
    """The NetState of `phase`: level and stages from the solver's train_state / test_state,
    else from the net's own `state:` header."""
    from netc.spec.messages import NetState

    chosen = None
    if solver is not None:
        chosen = solver.train_state if phase == "TRAIN" else (
            solver.test_state[0] if solver.test_state else None)
    if chosen is None and spec is not None and getattr(spec, "state", None) is not None:
        chosen = spec.state
    if chosen is None:
        return NetState(phase=phase)
    return NetState(phase=phase, level=chosen.level, stage=tuple(chosen.stage))


def with_source(spec, source: str, phase: str = "TRAIN"):
    """Replace the data source of the data layer active in `phase` (--data). A relative path
    that exists from the current directory is made absolute (the user typed it here)."""
    from netc.spec.messages import NetState

    if source.startswith("text:") and os.path.exists(source[5:]):
        source = "text:" + os.path.abspath(source[5:])
    elif not source.startswith("netc:") and os.path.exists(source):
        source = os.path.abspath(source)
    state = NetState(phase=phase)
    hits = [i for i, layer in enumerate(spec.layers)
            if layer.in_state(state) and getattr(layer, "data_param", None) is not None]
    if not hits:
        raise RunError(f"--data: the {phase} net has no Data layer whose source could be replaced")
    if len(hits) > 1:
        names = ", ".join(spec.layers[i].name for i in hits)
        raise RunError(f"--data: the {phase} net has several Data layers ({names}); edit the spec")
    i = hits[0]
    layer = spec.layers[i]
    dp = layer.data_param.model_copy(update={"source": source})
    spec.layers[i] = layer.model_copy(update={"data_param": dp})
    return spec


@dataclass
class RunContext:
    """A loaded spec with its solver and the plans made from it (made once, shared)."""

    path: str
    spec: Any
    solver: Any
    plans: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # the --solver file's, as lines

    def plan(self, phase: str, batch: int | None = None):
        """The plan of `phase` (made once). TRAIN and TEST are planned together when their
        NetStates differ only by phase, so a problem of both is reported once, as `netc check`
        does. Raises RunError with every FILE:LINE:COL error."""
        key = (phase, batch)
        if key not in self.plans:
            self._plan_phases(batch)
        return self.plans[key]

    def weight_plans(self) -> list:
        """The plans whose parameters an imported checkpoint fills: TEST's, and TRAIN's where it
        plans too (a deploy spec has no TRAIN net; a TEST net that does not plan is an error)."""
        from netc.runtime.errors import NetcError

        plans = []
        for phase in ("TEST", "TRAIN"):
            try:
                plans.append(self.plan(phase))
            except NetcError:
                if phase == "TEST":
                    raise
        return plans

    def _plan_phases(self, batch: int | None) -> None:
        from netc.compiler.plan import plan, plan_all_phases
        from netc.compiler.solver_check import check_solver

        states = {ph: net_state(ph, self.solver, self.spec) for ph in ("TRAIN", "TEST")}
        train, test = states["TRAIN"], states["TEST"]
        if (train.level, tuple(train.stage)) == (test.level, tuple(test.stage)):
            plans = plan_all_phases(self.spec, stages=tuple(train.stage), level=train.level,
                                    batch=batch)
        else:
            plans = {ph: plan(self.spec, st, batch=batch) for ph, st in states.items()}
        check_solver(self.spec, self.solver, plans.get("TEST"))
        if self.spec.diagnostics.errors:
            raise RunError(lines=diag_lines(self.spec.diagnostics))
        for ph, p in plans.items():
            self.plans[(ph, batch)] = p


def load_context(path: str, solver_path: str | None = None, *, data: str | None = None,
                 input_shapes: dict | None = None) -> RunContext:
    warnings: list[str] = []
    spec, solver = load_spec(path, solver_path, warnings=warnings)
    if input_shapes:  # --input-shape BLOB=N,C,H,W (compiler/input_shapes.py)
        from netc.compiler.input_shapes import declare_input_shapes

        declare_input_shapes(spec, input_shapes)
        if spec.diagnostics.errors:
            raise RunError(lines=diag_lines(spec.diagnostics))
    if data is not None:
        spec = with_source(spec, data)
    return RunContext(path, spec, solver, warnings=warnings)
