"""pask-apply's contract (docs/design.md "CLI"): exit codes, dry-run, JSON, errors with lines."""

import json
import textwrap

import pytest

from pask_ipvs import cli
from pask_ipvs.backend.fake import fake_backends, kernel_writes
from pask_ipvs.cli.apply import main as apply_main

GOOD = textwrap.dedent("""\
    version: 1
    services:
      - name: web
        vip: 10.99.100.1
        port: 80
        protocol: tcp
        scheduler: rr
        real_servers:
          - {address: 10.99.2.11, port: 8080}
          - {address: 10.99.2.12, port: 8080, weight: 3}
    """)


@pytest.fixture
def files(tmp_path):
    cfg = tmp_path / "pask.yaml"
    cfg.write_text(GOOD)
    return cfg, ["--state-file", str(tmp_path / "state.json"),
                 "--health-file", str(tmp_path / "health.json")]


def run(kernel, capsys, *argv):
    """pask-apply in-process, against ``kernel`` (the fakes; None: as the CLI picks)."""
    code = apply_main([str(a) for a in argv], backends=kernel and (lambda: kernel))
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_plan_and_changes_nothing(kernel, files, capsys):
    cfg, opts = files
    code, out, _ = run(kernel, capsys, "--dry-run", *opts, cfg)
    assert code == 0
    assert "+ service web 10.99.100.1:80/tcp rr" in out
    assert "+ dest web 10.99.100.1:80/tcp -> 10.99.2.12:8080 masq weight 3" in out
    assert "Plan: " in out and kernel_writes(kernel) == 0


def test_detailed_exitcode_two_on_change_then_zero(kernel, files, capsys):
    cfg, opts = files
    assert run(kernel, capsys, "--detailed-exitcode", "--dry-run", *opts, cfg)[0] == 2
    assert run(kernel, capsys, "--detailed-exitcode", *opts, cfg)[0] == 2
    code, out, _ = run(kernel, capsys, "--detailed-exitcode", *opts, cfg)
    assert code == 0 and "No changes" in out
    assert run(kernel, capsys, *opts, cfg)[0] == 0


def test_plain_apply_exits_zero_on_change(kernel, files, capsys):
    cfg, opts = files
    code, out, _ = run(kernel, capsys, *opts, cfg)
    assert code == 0 and "verified" in out


def test_json_output_shape(kernel, files, capsys):
    cfg, opts = files
    code, out, _ = run(kernel, capsys, "--format", "json", "--dry-run", *opts, cfg)
    doc = json.loads(out)
    assert code == 0 and doc["changed"] is True and doc["dry_run"] is True
    assert doc["verified"] is None and doc["errors"] == []
    assert {"action", "kind", "key", "service", "before", "after", "reason"} <= set(doc["ops"][0])
    assert sum(doc["counts"].values()) == len(doc["ops"])
    code, out, _ = run(kernel, capsys, "--format", "json", *opts, cfg)
    doc = json.loads(out)
    assert doc["verified"] is True and doc["drift"] == []


def test_bad_config_lists_every_problem_with_line_and_touches_nothing(kernel, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("weight: 3", "weight: 70000").replace("scheduler: rr",
                                                                        "scheduler: fastest"))
    code, out, err = run(kernel, capsys, "--state-file", tmp_path / "s.json", bad)
    assert code == 1 and kernel_writes(kernel) == 0
    assert f"{bad}:7: $.services[0].scheduler" in err
    assert f"{bad}:10: $.services[0].real_servers[1].weight" in err


def test_bad_config_json_carries_errors(kernel, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 80\n", "port: -1\n"))
    code, out, _ = run(kernel, capsys, "--format", "json", "--state-file", tmp_path / "s.json", bad)
    doc = json.loads(out)
    assert code == 1 and any("$.services[0].port" in e for e in doc["errors"])


def test_usage_error_exits_one_not_two(capsys):
    with pytest.raises(SystemExit) as e:
        cli.apply_main(["--format", "yaml", "x.yaml"])
    assert e.value.code == 1


def test_missing_config_file_is_a_clear_error(kernel, tmp_path, capsys):
    code, _, err = run(kernel, capsys, "--state-file", tmp_path / "s.json", tmp_path / "nope.yaml")
    assert code == 1 and "nope.yaml" in err and "cannot read" in err


def test_unavailable_scheduler_fails_before_any_change(files, capsys):
    b = fake_backends(available_schedulers={"rr", "wlc"})
    cfg, opts = files
    cfg.write_text(GOOD.replace("scheduler: rr", "scheduler: twos"))
    code, _, err = run(b, capsys, *opts, cfg)
    assert code == 1 and "ip_vs_twos" in err and kernel_writes(b) == 0


def test_offline_plans_without_kernel(files, capsys):
    cfg, opts = files
    code, out, _ = run(None, capsys, "--offline", "--detailed-exitcode", *opts, cfg)
    assert code == 2 and "+ service web" in out


def test_validate_command(tmp_path, capsys, files):
    cfg, _ = files
    assert cli.main(["validate", str(cfg)]) == 0
    bad = tmp_path / "b.yaml"
    bad.write_text("version: 2\nservices: []\n")
    assert cli.main(["validate", str(bad)]) == 1
    assert "$.version" in capsys.readouterr().err


def test_pask_umbrella_help_and_unknown(capsys):
    assert cli.main(["--help"]) == 0
    assert "realserver" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 1


def test_a_big_apply_reports_its_size_and_counts(kernel, tmp_path, capsys):
    """More ops than are shown: one line with the plan's size and counts (the run lets the
    ops themselves go before verify), then the verdict."""
    from builders import yaml_config

    cfg = tmp_path / "big.yaml"
    cfg.write_text(yaml_config(20))
    opts = ["--state-file", str(tmp_path / "state.json"), "--health-file", str(tmp_path / "h.json")]
    code, out, _ = run(fake_backends(), capsys, "--dry-run", "--format", "json", *opts, cfg)
    report = json.loads(out)
    counts, n = report["counts"], len(report["ops"])
    assert code == 0 and n > 50 and sum(counts.values()) == n
    code, out, err = run(kernel, capsys, *opts, cfg)
    assert code == 0 and err == ""
    assert out == (f"applied {n} changes ("
                   + ", ".join(f"{c} {k}" for k, c in counts.items() if c) + ").\n"
                   "Applied and verified: the kernel matches the config.\n")


# -- the console script: run() ends the process at once ----------------------------------

def _console(tmp_path, *argv):
    """pask-apply as installed (pask_ipvs.cli.apply:run), in a child process."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", "from pask_ipvs.cli.apply import run; run()",
                           *map(str, argv)], capture_output=True, text=True, cwd=tmp_path)


def test_the_console_script_exits_with_mains_code_and_all_its_output(files, tmp_path):
    cfg, state = files
    done = _console(tmp_path, "--offline", "--format", "json", "--detailed-exitcode", cfg)
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)                  # the whole JSON, flushed before the exit
    assert report["changed"] and report["errors"] == []
    assert sum(1 for op in report["ops"] if op["kind"] in ("service", "dest")) == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("scheduler: rr", "scheduler: fastest"))
    done = _console(tmp_path, "--offline", *state, bad)
    assert done.returncode == 1 and f"{bad}:7: $.services[0].scheduler" in done.stderr
    done = _console(tmp_path, "--help")
    assert done.returncode == 0 and "pask-apply" in done.stdout


def test_an_exiting_run_leaves_its_objects_to_the_exit_and_others_do_not(files, monkeypatch, capsys):
    from pask_ipvs import pipeline
    monkeypatch.setattr(pipeline, "_LEFT_TO_EXIT", [])
    cfg, state = files
    kernel = fake_backends()
    assert apply_main([*state, str(cfg)], backends=lambda: kernel) == 0
    assert pipeline._LEFT_TO_EXIT == []
    cfg.write_text(GOOD.replace("weight: 3", "weight: 4"))
    assert apply_main([*state, str(cfg)], backends=lambda: kernel, exiting=True) == 0
    (config, _cache, planned, outcome), = pipeline._LEFT_TO_EXIT
    assert config.services[0].name == "web" and outcome.verified
