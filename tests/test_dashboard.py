"""dashboards/pask-ipvs.json asks only for what pask-healthd exports: every metric name,
every label it matches or groups by, and every label its legends print."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re

import pytest

from builders import config, include, rs, svc
from conftest import REPO
from daemons import metrics_daemon, scrape
from pask_ipvs.model import Health
from pask_ipvs.state import mark_applied

DASHBOARD = REPO / "dashboards" / "pask-ipvs.json"


def exported(tmp_path) -> dict[str, set[str]]:
    """Sample name -> its label names, from a scrape where every series exists."""
    health = Health(type="tcp", interval=2, timeout=1, rise=1, fall=1)
    cfg = config(dataclasses.replace(svc("web", servers=[rs("10.99.2.11"), rs("10.99.2.12")]),
                                     health=health),
                 svc("inner", servers=[rs("10.99.2.11")], filters=[include(src="10.99.1.0/24")]))
    state = tmp_path / "state.json"
    mark_applied(str(state), 1767225600.0)
    d, _, probe, registry = metrics_daemon(cfg, {"inner": 1}, state_file=str(state))
    probe.ok["10.99.2.12"] = False
    asyncio.run(d.run_round())
    return {name: {k for labels, _ in samples for k in labels} for name, samples in scrape(registry).items()}


def problems(expr: str, legend: str, names: dict[str, set[str]]) -> list[str]:
    """What in one panel query names something pask does not export."""
    out = []
    used = [w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r'"[^"]*"|\[[^]]*\]', "", expr))
            if w.startswith("pask_")]
    if not used:
        out.append(f"{expr}: names no pask metric")
    labels: set[str] = set()
    for name in used:
        if name not in names:
            out.append(f"{expr}: {name} is not exported")
        labels |= names.get(name, set())
    for name, matchers in re.findall(r"(pask_\w+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*[=!]~?", matchers):
            if label not in names.get(name, set()):
                out.append(f"{expr}: {name} has no label {label!r}")
    grouped: set[str] | None = None
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        keys = {k.strip() for k in group.split(",") if k.strip()}
        out += [f"{expr}: groups by {k!r}, which no metric in it has" for k in keys - labels]
        grouped = keys if grouped is None else grouped & keys
    shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    have = labels if grouped is None else grouped
    out += [f"{legend!r}: {k!r} is not a label of {expr}" for k in sorted(shown - have)]
    return out


def queries() -> list[tuple[str, str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            out.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["query"]["query"], ""))
    return out


def test_every_dashboard_query_names_exported_metrics_and_labels(tmp_path):
    names = exported(tmp_path)
    found = [f"{title}: {p}" for title, expr, legend in queries() for p in problems(expr, legend, names)]
    assert not found, "\n".join(found)


def test_the_dashboard_covers_every_exported_metric_family(tmp_path):
    names = exported(tmp_path)
    text = " ".join(expr for _, expr, _ in queries())
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in names}
    missing = [f for f in sorted(families) if f not in text]
    # per-server byte counters and inactive connections are left to ad-hoc queries
    assert set(missing) <= {"pask_real_server_bytes", "pask_real_server_connections_inactive",
                            "pask_service_connections_inactive", "pask_service_packets",
                            "pask_real_server_connections"}, missing


@pytest.mark.parametrize("expr, legend, needle", [
    ("rate(pask_real_server_packts_total[5m])", "", "is not exported"),
    ('pask_real_server_up{server="x"}', "", "has no label 'server'"),
    ("sum by (vip, host) (pask_service_connections_active)", "", "groups by 'host'"),
    ("sum by (service) (pask_service_connections_active)", "{{vip}}", "'vip' is not a label"),
    ("time()", "", "names no pask metric"),
])
def test_the_checker_catches_what_a_typo_breaks(tmp_path, expr, legend, needle):
    assert any(needle in p for p in problems(expr, legend, exported(tmp_path)))


def test_panels_have_unique_ids_and_the_datasource_variable():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {"datasource", "service"} <= {v["name"] for v in dash["templating"]["list"]}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
