"""The plan as text an operator reads like a diff, and as JSON for tools (Ansible)."""

from __future__ import annotations

import dataclasses
import enum
import os
from typing import Iterable

from ..objects import Engine, EngineObserved, IpvsDest, KernelModule, NftTable
from ..plan import ADD, DELETE, REPLACE, SET, Op, Plan
from . import NO_CHANGES

_FIELDS_SHOWN = {
    "service": ("scheduler", "flags", "timeout", "netmask"),
    "dest": ("fwd", "weight", "u_threshold", "l_threshold"),
}


def op_line(op: Op) -> str:
    who = f" {op.service}" if op.service else ""
    why = f"  ({op.reason})" if op.reason else ""
    if op.kind == "service":
        body = str(op.after if op.after is not None else op.before)
        if op.action == SET:
            body = f"{op.label} {_changes(op)}"
    elif op.kind == "dest":
        if op.action == SET:
            body = f"{op.label} {_changes(op)}"
        else:
            d: IpvsDest = op.after if op.after is not None else op.before
            body = f"{op.label} {d.fwd} weight {d.weight}"
    elif op.kind == "sysctl":
        body = f"{op.label} = {op.after}" + (f" (was {op.before})" if op.before is not None else "")
    elif op.kind == "nft":
        body = "table inet pask"
        if isinstance(op.after, NftTable):
            body += f" ({len(op.after.command_list())} objects, {op.after.digest})"
    elif op.kind == "module" and op.action == SET:
        body = f"{op.label} {_module_params(op.before)} -> {_module_params(op.after)}"
    elif op.kind == "module" and isinstance(op.after, KernelModule):
        body = str(op.after)
    elif op.kind == "sync":
        body = str(op.after if op.after is not None else op.before)
    elif op.kind == "engine":
        body = _engine_change(op)
        why = ""
    elif op.kind == "link" and op.action == SET:
        body = f"{op.label} {op.before or 'absent'} -> {op.after}"
    else:
        body = op.label
    return f"{op.symbol} {op.kind}{who} {body}{why}"


def _engine_change(op: Op) -> str:
    if op.action == DELETE:
        return f"{op.label} (stop)"
    want: Engine = op.after
    if op.action == ADD:
        written = ", ".join(os.path.basename(f.path) for f in want.files)
        return f"{op.label} (start; writes {written})"
    have: EngineObserved = op.before
    changed = [os.path.basename(w.path) for w, h in zip(want.files, have.files) if w != h]
    how = "restart" if want.reload == "restart" else "reload"
    return f"{op.label} {', '.join(changed)} changed ({how})"


def _module_params(module: KernelModule) -> str:
    return " ".join(f"{k}={v}" for k, v in module.params) or "(no parameters)"


def _changes(op: Op) -> str:
    parts = []
    for name in _FIELDS_SHOWN.get(op.kind, ()):
        old, new = getattr(op.before, name), getattr(op.after, name)
        if old != new:
            parts.append(f"{name} {_fmt(old)} -> {_fmt(new)}")
    return ", ".join(parts) or "(attributes)"


def _fmt(value: object) -> str:
    if isinstance(value, frozenset):
        return "[" + ",".join(sorted(value)) + "]"
    return str(value)


def summary(plan: Plan) -> str:
    if not plan.ops:
        return NO_CHANGES
    c = plan.counts()
    return (f"Plan: {c[ADD]} to add, {c[SET]} to change, {c[DELETE]} to delete"
            + (f", {c[REPLACE]} to replace" if c[REPLACE] else "") + ".")


def plan_text(plan: Plan | Iterable[Op], *, limit: int | None = None) -> str:
    ops = list(plan.ops if isinstance(plan, Plan) else plan)
    lines = [op_line(op) for op in (ops if limit is None else ops[:limit])]
    if limit is not None and len(ops) > limit:
        lines.append(f"... and {len(ops) - limit} more (use -v to list all)")
    p = plan if isinstance(plan, Plan) else Plan(tuple(ops))
    lines.append(summary(p))
    return "\n".join(lines) + "\n"


def to_jsonable(value: object) -> object:
    """Kernel value types -> plain JSON data (frozensets sorted, enums by value)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, NftTable):
            return {"digest": value.digest, "objects": len(value.command_list())}
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):        # the kernel NamedTuples
        return {k: to_jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, (frozenset, set)):
        return sorted(to_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def op_json(op: Op) -> dict:
    return {
        "action": op.action, "kind": op.kind, "key": op.label,
        "service": op.service or None,
        "before": to_jsonable(op.before), "after": to_jsonable(op.after),
        "reason": op.reason,
    }
