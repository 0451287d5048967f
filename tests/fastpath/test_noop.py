"""The no-op fast path: same answer as the ordinary path, taken only when nothing changed."""

import json
import pathlib

import pytest

from pask_ipvs.backend.fake import kernel_writes
from pask_ipvs.cli.apply import main as apply_main
from pask_ipvs.fastpath import noop
from pask_ipvs.objects import IpvsDest, VipAddress
from pask_ipvs.state import load_state

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
# filters (nft marks), SNAT (nft + conntrack sysctl), VIPs on pask0: every kind of object
CONFIG = (EXAMPLES / "filters.yaml").read_text()


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "pask.yaml"
    cfg.write_text(CONFIG)
    state = tmp_path / "state.json"
    return cfg, state, ["--state-file", str(state), "--health-file", str(tmp_path / "health.json")]


def run(kernel, capsys, *argv):
    """pask-apply in-process, against ``kernel`` (the fakes; None: as the CLI picks)."""
    code = apply_main([str(a) for a in argv], backends=kernel and (lambda: kernel))
    out, err = capsys.readouterr()
    return code, out, err


def fast(kernel) -> bool:
    """True when the last run answered from the fingerprint: the kernel's digests read, and
    neither the whole table nor the desired state's digests (the ordinary path's plan)."""
    return kernel.ipvs.service_digest_calls > 0 and kernel.ipvs.observe_calls == 0 \
        and kernel.ipvs.expected_digest_calls == 0


def reset_counts(kernel):
    kernel.ipvs.service_digest_calls = kernel.ipvs.observe_calls = 0
    kernel.ipvs.expected_digest_calls = 0


@pytest.fixture
def applied(kernel, files, capsys):
    cfg, state, opts = files
    assert run(kernel, capsys, "--detailed-exitcode", *opts, cfg)[0] == 2
    assert load_state(str(state)).last_verified is not None
    reset_counts(kernel)
    return files


def test_a_rerun_answers_from_the_fingerprint_with_the_same_output(kernel, applied, capsys):
    cfg, state, opts = applied
    writes = kernel_writes(kernel)
    code, out, err = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    assert fast(kernel) and code == 0 and kernel_writes(kernel) == writes
    assert out == "No changes. The kernel matches the config.\n" and err == ""


@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_fast_json_report_equals_the_ordinary_one(kernel, applied, capsys, extra):
    cfg, state, opts = applied
    code, out, _ = run(kernel, capsys, "--format", "json", "--detailed-exitcode", *extra, *opts, cfg)
    assert fast(kernel) and code == 0
    fast_doc = json.loads(out)
    reset_counts(kernel)
    data = json.loads(state.read_text())
    del data["fingerprint"]                                       # the ordinary path, same kernel
    state.write_text(json.dumps(data))
    code, out, _ = run(kernel, capsys, "--format", "json", "--detailed-exitcode", *extra, *opts, cfg)
    assert not fast(kernel) and code == 0
    assert fast_doc == json.loads(out)


def test_verbose_says_why_nothing_was_planned(kernel, applied, capsys):
    cfg, state, opts = applied
    code, out, err = run(kernel, capsys, "-v", *opts, cfg)
    assert code == 0 and "fingerprints match" in err


def _weight_changed(kernel):
    dests = kernel.ipvs.dests[next(iter(kernel.ipvs.dests))]
    key, d = next(iter(dests.items()))
    dests[key] = IpvsDest(d.service, d.addr, d.port, d.fwd, d.weight + 7)


def _service_added(kernel):      # a foreign service: not pask's, but the table changed
    from pask_ipvs.objects import IpvsService, ServiceKey
    kernel.ipvs.seed([IpvsService(ServiceKey.virtual("tcp", "10.99.77.1", 80), "rr")])


def _nft_edited(kernel):
    kernel.nft.tamper()


def _vip_removed(kernel):
    kernel.addr.addrs.pop()


def _link_down(kernel):
    from pask_ipvs.objects import LinkObserved
    kernel.addr.links["pask0"] = LinkObserved("pask0", "dummy", False)


def _sysctl_changed(kernel):
    kernel.sysctl.values["net.ipv4.ip_forward"] = "0"


@pytest.mark.parametrize("drift", [_weight_changed, _service_added, _nft_edited, _vip_removed,
                                   _link_down, _sysctl_changed], ids=lambda f: f.__name__[1:])
def test_any_kernel_change_takes_the_ordinary_path(kernel, applied, capsys, drift):
    cfg, state, opts = applied
    drift(kernel)
    code, out, err = run(kernel, capsys, "--detailed-exitcode", "-v", *opts, cfg)
    # the fingerprint read once by the no-op check; verify's own digest reads come with
    # an expected_digests() each
    assert not fast(kernel) and \
        kernel.ipvs.service_digest_calls == 1 + kernel.ipvs.expected_digest_calls
    assert "kernel changed since the last verified apply" in err
    if drift is _service_added:
        assert code == 0                  # a foreign service is left alone: nothing to do
    else:
        assert code == 2 and "Applied and verified" in out
    reset_counts(kernel)
    assert run(kernel, capsys, "--detailed-exitcode", *opts, cfg)[0] == 0 and fast(kernel)


def test_a_changed_config_takes_the_ordinary_path(kernel, applied, capsys):
    cfg, state, opts = applied
    cfg.write_text(CONFIG.replace("scheduler: rr", "scheduler: wrr", 1))
    assert "scheduler: wrr" in cfg.read_text()
    code, _, _ = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    # no fingerprint read for the no-op check: only verify's own, each with its expected digests
    assert code == 2 and kernel.ipvs.service_digest_calls == kernel.ipvs.expected_digest_calls


def test_a_comment_in_the_config_is_a_change_too(kernel, applied, capsys):
    cfg, state, opts = applied
    cfg.write_text(CONFIG + "# edited\n")
    code, _, _ = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    # no fingerprint read for the no-op check: only the plan's, with its expected digests
    assert code == 0 and kernel.ipvs.service_digest_calls == kernel.ipvs.expected_digest_calls == 1


def test_a_changed_health_file_takes_the_ordinary_path(kernel, applied, capsys, tmp_path):
    cfg, state, opts = applied
    from pask_ipvs.load import load_config
    svc = load_config(str(cfg)).services[0]
    rs = svc.real_servers[0]
    (tmp_path / "health.json").write_text(json.dumps(
        {"version": 1, "servers": {f"{svc.name}/{rs.address}:{rs.port}": {"up": False}}}))
    code, out, _ = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    # no fingerprint read for the no-op check: only verify's own, each with its expected digests
    assert code == 2 and kernel.ipvs.service_digest_calls == kernel.ipvs.expected_digest_calls
    assert "weight 0" in out or "~" in out


def test_new_pask_code_takes_the_ordinary_path(kernel, applied, capsys, monkeypatch):
    cfg, state, opts = applied
    from pask_ipvs.fastpath import config_cache
    monkeypatch.setattr(config_cache, "code_digest", lambda: b"another version of pask")
    code, _, _ = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    assert code == 0 and kernel.ipvs.service_digest_calls == kernel.ipvs.expected_digest_calls == 1


def test_a_failed_verify_records_no_fingerprint(kernel, files, capsys, monkeypatch):
    cfg, state, opts = files
    real_apply = kernel.ipvs.apply

    def off_by_one(ops):           # the kernel takes every dest one weight higher
        from pask_ipvs.plan import Op
        bent = [Op(o.action, o.kind, o.label, o.before, o.after._replace(weight=o.after.weight + 1),
                   o.reason, o.service) if o.kind == "dest" and o.after is not None else o for o in ops]
        return real_apply(bent)
    kernel.ipvs.apply = off_by_one
    code, _, err = run(kernel, capsys, *opts, cfg)
    assert code == 1 and "verify" in err
    assert load_state(str(state)).last_verified is None


def test_draining_never_takes_the_fast_path(kernel, files, capsys):
    cfg, state, opts = files
    with_drain = "drain_timeout: 600\n" + CONFIG
    cfg.write_text(with_drain)
    assert run(kernel, capsys, *opts, cfg)[0] == 0
    line = next(line for line in with_drain.splitlines() if "address: 10.99.2.61" in line)
    dkey = next(k for dests in kernel.ipvs.dests.values() for k in dests if k.addr == "10.99.2.61")
    kernel.ipvs.set_conns(dkey, 3)                                 # busy: it must drain
    cfg.write_text(with_drain.replace(line + "\n", "", 1))          # that real server removed
    assert run(kernel, capsys, *opts, cfg)[0] == 0
    st = load_state(str(state))
    assert st.draining and st.last_verified is None
    reset_counts(kernel)
    assert run(kernel, capsys, *opts, cfg)[0] == 0
    assert kernel.ipvs.service_digest_calls == kernel.ipvs.expected_digest_calls == 1


def test_offline_never_uses_the_fingerprint(kernel, applied, capsys):
    cfg, state, opts = applied
    code, out, _ = run(kernel, capsys, "--offline", *opts, cfg)
    assert code == 0 and kernel.ipvs.service_digest_calls == kernel.ipvs.expected_digest_calls == 1


def test_an_unreadable_fingerprint_only_costs_time(kernel, applied, capsys):
    cfg, state, opts = applied
    data = json.loads(state.read_text())
    data["fingerprint"] = {"inputs": 1}
    state.write_text(json.dumps(data))
    assert load_state(str(state)).last_verified is None
    assert run(kernel, capsys, "--detailed-exitcode", *opts, cfg)[0] == 0
    assert load_state(str(state)).last_verified is not None


def test_a_kernel_that_cannot_be_fingerprinted_is_planned(kernel, applied, capsys, monkeypatch):
    cfg, state, opts = applied
    monkeypatch.setattr(kernel.ipvs, "service_digests", lambda: None)
    assert run(kernel, capsys, "--detailed-exitcode", *opts, cfg)[0] == 0
    assert kernel.ipvs.observe_calls == 1


def test_vips_are_part_of_the_fingerprint(kernel, applied, capsys):
    cfg, state, opts = applied
    kernel.addr.addrs.add(VipAddress("pask0", "10.99.250.1", 32))     # someone else's address
    code, _, _ = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    assert not fast(kernel) and kernel.ipvs.expected_digest_calls == 1


def test_the_fast_paths_empty_plan_is_the_planners():
    from pask_ipvs.plan import Plan
    from pask_ipvs.render import NO_CHANGES
    from pask_ipvs.render.text import plan_text
    assert noop.EMPTY_PLAN_COUNTS == Plan().counts()
    assert plan_text(Plan()) == NO_CHANGES + "\n"


APPLICATIONS = """
version: 1
services:
  - {name: ftp, vip: 10.99.100.1, port: 2121, application: ftp, real_servers: [{address: 10.99.2.11}]}
  - {name: tftp, vip: 10.99.100.1, port: 69, protocol: udp, application: tftp,
     real_servers: [{address: 10.99.2.11}]}
"""


def test_a_helper_module_unloaded_by_hand_takes_the_ordinary_path(kernel, files, capsys):
    """Modules are part of the fingerprint: a helper gone from the kernel is planned again."""
    cfg, state, opts = files
    cfg.write_text(APPLICATIONS)
    assert run(kernel, capsys, "--detailed-exitcode", *opts, cfg)[0] == 2
    reset_counts(kernel)
    assert run(kernel, capsys, "--detailed-exitcode", *opts, cfg)[0] == 0 and fast(kernel)
    del kernel.modules.loaded["nf_nat_tftp"]
    reset_counts(kernel)
    code, out, _ = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    assert code == 2 and not fast(kernel)
    assert "+ module nf_nat_tftp" in out and "nf_nat_tftp" in kernel.modules.loaded


def test_the_config_cache_is_written_before_the_kernel_and_never_by_a_dry_run(kernel, files,
                                                                                capsys):
    """A run that has its plan and is about to apply writes the config cache first (its
    pickling then does not add to the memory of the apply and verify); a dry run never."""
    import os

    from pask_ipvs.fastpath.config_cache import cache_file_for

    cfg, state, opts = files
    cache = cache_file_for(str(state))
    assert run(kernel, capsys, "--dry-run", *opts, cfg)[0] == 0 and not os.path.exists(cache)
    seen = []
    real_apply = kernel.ipvs.apply
    kernel.ipvs.apply = lambda ops: seen.append(os.path.exists(cache)) or real_apply(ops)
    assert run(kernel, capsys, *opts, cfg)[0] == 0
    assert seen and all(seen)
