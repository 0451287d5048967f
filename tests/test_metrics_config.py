"""The ``metrics:`` key: its model, its errors (with lines), and the last-apply record it reports."""

from __future__ import annotations

import time

import pytest

from pask_ipvs.backend.fake import fake_backends
from pask_ipvs.cli.apply import main as apply_main
from pask_ipvs.model import Metrics
from pask_ipvs.objects import split_listen
from pask_ipvs.state import last_applied, mark_applied

HEAD = """\
version: 1
metrics:
  listen: {listen}
services:
  - {{name: web, vip: 10.99.100.1, port: 80, real_servers: [{{address: 10.99.2.11}}]}}
"""


@pytest.mark.parametrize("listen, address, port", [
    ('"127.0.0.1:9640"', "127.0.0.1", 9640),
    ('"[::1]:9640"', "::1", 9640),
    ('"[FD00:0::1]:1"', "fd00::1", 1),
    ('"0.0.0.0:65535"', "0.0.0.0", 65535),
])
def test_listen_forms(load_text, listen, address, port):
    config = load_text(HEAD.format(listen=listen))
    assert config.metrics == Metrics(address, port, per_server=True)


def test_per_server_false_and_listen_text(load_text):
    config = load_text(HEAD.format(listen='"[::1]:9640"').replace(
        "  listen:", "  per_server: false\n  listen:"))
    assert config.metrics.per_server is False
    assert config.metrics.listen == "[::1]:9640"


def test_no_metrics_key_no_metrics(load_text):
    assert load_text(HEAD.format(listen="x").replace('metrics:\n  listen: x\n', "")).metrics is None


@pytest.mark.parametrize("listen, message", [
    ('"9640"', "'9640' is not address:port"),
    ('"::1:9640"', "an IPv6 address goes in brackets"),
    ('"localhost:9640"', "'localhost' in 'localhost:9640' is not an IPv4 or IPv6 address "
                         "(host names are not resolved)"),
    ('"127.0.0.1:0"', "port '0' in '127.0.0.1:0' is not a port 1..65535"),
    ('"127.0.0.1:65536"', "port '65536'"),
    ('"127.0.0.1:http"', "port 'http'"),
    ('"[::1]9640"', "is not address:port"),
])
def test_bad_listen_is_an_error_with_its_line(problems_of, listen, message):
    [p] = problems_of(HEAD.format(listen=listen))
    assert (p.line, p.path) == (3, "$.metrics.listen")
    assert message in p.message


def test_metrics_structure_errors_are_collected(problems_of):
    problems = problems_of("""\
        version: 1
        metrics: {per_server: "yes", port: 9640}
        services: []
        """)
    text = "\n".join(str(p) for p in problems)
    assert "listen" in text and "per_server" in text and "port" in text, text
    assert all(p.line == 2 for p in problems)


def test_split_listen():
    assert split_listen("1.2.3.4:5") == ("1.2.3.4", "5")
    assert split_listen("[::]:5") == ("::", "5")
    assert split_listen("::5") is None and split_listen("[::]") is None and split_listen(":5") is None


# -- pask_apply_last_success_timestamp_seconds: the mtime of <state file>.applied ---------------

def test_the_applied_marker_records_a_time_beside_the_state_file(tmp_path):
    state = str(tmp_path / "state.json")
    assert last_applied(state) is None
    mark_applied(state, 1700000000.5)
    assert last_applied(state) == 1700000000.5
    assert not (tmp_path / "state.json").exists()        # the state file is not touched
    mark_applied(state)
    assert abs(last_applied(state) - time.time()) < 60


def test_a_verified_apply_records_its_time_and_a_dry_run_does_not(tmp_path, capsys):
    cfg = tmp_path / "pask.yaml"
    cfg.write_text(HEAD.format(listen='"127.0.0.1:9640"'))
    state = tmp_path / "state.json"
    kernel = fake_backends()
    argv = [str(cfg), "--state-file", str(state), "--health-file", str(tmp_path / "h.json")]
    assert apply_main(["--dry-run", *argv], backends=lambda: kernel) == 0
    assert last_applied(str(state)) is None
    assert apply_main(argv, backends=lambda: kernel) == 0
    first = last_applied(str(state))
    assert first is not None
    # a no-op run (the fast path: nothing planned) is a successful apply too
    assert apply_main(argv, backends=lambda: kernel) == 0
    assert last_applied(str(state)) >= first
    assert apply_main(["--dry-run", *argv], backends=lambda: kernel) == 0
    assert kernel.ipvs.writes > 0


def test_a_failed_apply_keeps_the_last_success(tmp_path, capsys):
    from pask_ipvs.objects import IpvsService, ServiceKey
    from pask_ipvs.plan import Op

    cfg = tmp_path / "pask.yaml"
    cfg.write_text(HEAD.format(listen='"127.0.0.1:9640"'))
    state = tmp_path / "state.json"
    argv = [str(cfg), "--state-file", str(state), "--health-file", str(tmp_path / "h.json")]
    kernel = fake_backends()
    assert apply_main(argv, backends=lambda: kernel) == 0
    first = last_applied(str(state))
    cfg.write_text(cfg.read_text() + "  - {name: api, vip: 10.99.100.2, port: 80}\n")
    real_apply = kernel.ipvs.apply

    def racing_apply(ops, *a, **kw):   # someone creates the new service between plan and apply
        kernel.ipvs.apply = real_apply
        key = ServiceKey.virtual("tcp", "10.99.100.2", 80)
        real_apply([Op("add", "service", "k", None, IpvsService(key, "rr"))])
        return real_apply(ops, *a, **kw)

    kernel.ipvs.apply = racing_apply
    assert apply_main(argv, backends=lambda: kernel) == 1
    assert "apply failed" in capsys.readouterr().err
    assert last_applied(str(state)) == first
