#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0 (see the pask-ipvs project)
"""Ansible module: reconcile the kernel to a pask config by running pask-apply."""

DOCUMENTATION = r"""
---
module: pask_apply
short_description: Reconcile IPVS, nftables, VIPs and sysctls to a pask-ipvs config
description:
  - Runs C(pask-apply --format json --detailed-exitcode CONFIG) and reports its plan.
  - C(changed) is pask-apply's exit status 2 (changes); 0 means the kernel already matched.
  - In check mode it runs C(pask-apply --dry-run), which reads the kernel and changes nothing.
  - With C(--diff) the plan text (one line per kernel change) is shown as the task's diff.
  - "A bad config fails the task with every problem pask found, as C(FILE:LINE: $.path: message)."
options:
  config:
    description: Path of the pask config (YAML) on the managed host.
    type: path
    required: true
  state_file:
    description: pask's state file (what pask owns). Default is pask-apply's, /var/lib/pask/state.json.
    type: path
  health_file:
    description: Health file written by pask-healthd. Default is pask-apply's, /var/lib/pask/health.json.
    type: path
  node:
    description:
      - With an C(ha:) section, which of C(ha.nodes) this host is (C(pask-apply --node)).
      - Omitted, the node finds itself by the address it holds on C(ha.peer_link).
    type: str
  executable:
    description: The pask-apply program, a path or a name looked up in PATH.
    type: str
    default: pask-apply
attributes:
  check_mode:
    description: Runs C(pask-apply --dry-run) on the config; nothing in the kernel changes.
    support: full
  diff_mode:
    description: The plan text, one line per kernel change, is the task's diff.
    support: full
requirements:
  - pask-ipvs on the managed host, run as root (IPVS and nftables need CAP_NET_ADMIN).
author: pask-ipvs developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Apply the load-balancer config
  pask.ipvs.pask_apply:
    config: /etc/pask/config.yaml

- name: Apply one node of an HA pair (both nodes get the same config file)
  pask.ipvs.pask_apply:
    config: /etc/pask/config.yaml
    node: lb1

- name: Apply with a pask-apply from a virtualenv and a custom state file
  pask.ipvs.pask_apply:
    config: /etc/pask/config.yaml
    executable: /opt/pask-ipvs/bin/pask-apply
    state_file: /var/lib/pask/state.json
"""

RETURN = r"""
cmd:
  description: The command that ran.
  returned: always
  type: list
  elements: str
rc:
  description: pask-apply's exit status (0 no changes, 2 changes, 1 error).
  returned: always
  type: int
plan_text:
  description: The plan as text, one line per op, then a summary line.
  returned: success
  type: str
ops:
  description: The plan as data (action, kind, key, service, before, after, reason).
  returned: success
  type: list
  elements: dict
counts:
  description: Number of ops by action (add, set, delete, replace).
  returned: success
  type: dict
verified:
  description: True when the kernel matched the config after apply; null in check mode.
  returned: success
  type: bool
drift:
  description: Ops still needed after apply (empty when verified).
  returned: always
  type: list
  elements: dict
errors:
  description: "pask's error messages (config problems as FILE:LINE: $.path: message)."
  returned: always
  type: list
  elements: str
"""

import json

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = dict(
    config=dict(type="path", required=True),
    state_file=dict(type="path"),
    health_file=dict(type="path"),
    node=dict(type="str"),
    executable=dict(type="str", default="pask-apply"),
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


def build_command(executable, params, check_mode):
    """pask-apply's argv for these module parameters (the whole mapping lives here)."""
    cmd = [executable, "--format", "json", "--detailed-exitcode"]
    if check_mode:
        cmd.append("--dry-run")
    if params.get("state_file"):
        cmd += ["--state-file", params["state_file"]]
    if params.get("health_file"):
        cmd += ["--health-file", params["health_file"]]
    if params.get("node"):
        cmd += ["--node", params["node"]]
    cmd.append(params["config"])
    return cmd


def _report(stdout):
    """pask-apply's JSON object, or None when stdout holds none (e.g. a usage error)."""
    text = (stdout or "").strip()
    if not text:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        start = text.find("{")  # tolerate a stray line before the object
        if start < 0:
            return None
        try:
            report = json.loads(text[start:])
        except ValueError:
            return None
    return report if isinstance(report, dict) else None


def interpret(rc, stdout, stderr, want_diff=False):
    """Turn pask-apply's exit status and output into the module's result.

    Returns a dict with ``failed`` (bool), ``msg`` and the result fields.
    """
    report = _report(stdout) or {}
    errors = [str(e) for e in report.get("errors") or []]
    result = dict(
        rc=rc,
        changed=False,
        plan_text=report.get("plan_text", ""),
        ops=report.get("ops", []),
        counts=report.get("counts", {}),
        verified=report.get("verified"),
        drift=report.get("drift", []),
        errors=errors,
        dry_run=report.get("dry_run"),
        stderr=stderr or "",
    )
    if rc in (EXIT_OK, EXIT_CHANGES) and not report:
        result.update(failed=True, msg="pask-apply printed no JSON result (exit %d): %s"
                      % (rc, (stderr or stdout or "").strip()))
        return result
    if rc == EXIT_OK:
        result.update(failed=False, msg="No changes: the kernel matches the config.")
        return result
    if rc == EXIT_CHANGES:
        counts = result["counts"]
        result.update(failed=False, changed=True, msg="%s %d to add, %d to change, %d to delete, %d to replace." % (
            "Would change:" if report.get("dry_run") else "Changed:",
            counts.get("add", 0), counts.get("set", 0), counts.get("delete", 0), counts.get("replace", 0)))
        if want_diff:
            result["diff"] = dict(prepared=result["plan_text"])
        return result
    if not errors:
        errors = [line for line in (stderr or "").splitlines() if line.strip()]
        result["errors"] = errors
    if rc == EXIT_ERROR:
        what = "; ".join(errors) if errors else "no message"
        result.update(failed=True, msg="pask-apply failed: %s" % what)
    else:
        what = "; ".join(errors) if errors else (stdout or "").strip()
        result.update(failed=True, msg="pask-apply ended with unexpected exit status %s: %s" % (rc, what))
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    executable = module.params["executable"]
    if "/" not in executable:
        found = module.get_bin_path(executable,
                                    opt_dirs=["/usr/local/sbin", "/usr/local/bin", "/opt/pask-ipvs/bin"])
        if not found:
            module.fail_json(msg="%s not found in PATH: install pask-ipvs or set executable" % executable,
                             rc=None, cmd=[executable], errors=[])
        executable = found
    cmd = build_command(executable, module.params, module.check_mode)
    rc, stdout, stderr = module.run_command(cmd)
    result = interpret(rc, stdout, stderr, want_diff=module._diff)
    result["cmd"] = cmd
    if result.pop("failed"):
        module.fail_json(**result)
    # Ansible takes a non-zero rc for a failure unless told otherwise: 2 means "changed".
    module.exit_json(failed=False, **result)


if __name__ == "__main__":
    main()
