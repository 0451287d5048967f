#!/usr/bin/env python3
"""Write packaging/*.service from the pask.ipvs role's unit templates.

The role's templates are the one source of the systemd units: Ansible renders
them with the role's paths, this renders them with a pip install's paths
(/usr/local/bin) for operators without Ansible. tests/test_systemd_units.py
fails when packaging/ is not what this writes.

  .venv/bin/python tools/render_units.py            # rewrite packaging/*.service
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "ansible/ansible_collections/pask/ipvs/roles/pask_ipvs/templates"
PACKAGING = ROOT / "packaging"
UNITS = ("pask-apply.service", "pask-healthd.service")
#: The role's defaults, with the commands where `pip install pask-ipvs` puts them.
PACKAGING_VARS = {
    "ansible_managed": "Rendered from the pask.ipvs role's template by tools/render_units.py: edit the template.",
    "pask_bin_dir": "/usr/local/bin",
    "pask_config_file": "/etc/pask/config.yaml",
    "pask_state_file": "/var/lib/pask/state.json",
    "pask_health_file": "/var/lib/pask/health.json",
    "pask_healthd_apply_on_start": True,
}


def _bool(value) -> bool:   # Ansible's `bool` filter, for the values a role variable takes
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "yes", "true", "on", "y")


def render(name: str, variables: dict) -> str:
    """The unit ``name`` as Ansible's template module writes it (trim_blocks, trailing newline kept)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["bool"] = _bool
    env.filters["dirname"] = os.path.dirname
    return env.get_template(name + ".j2").render(**variables)


def main() -> int:
    for name in UNITS:
        (PACKAGING / name).write_text(render(name, PACKAGING_VARS))
        print(f"wrote packaging/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
