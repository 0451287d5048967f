"""The two YAML readers (yaml_fast: yaml-rs; yaml_lines: PyYAML) and the rule for plain
scalars that YAML 1.1 and 1.2 read differently (yaml_scalars)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pask_ipvs import yaml_fast
from pask_ipvs.errors import ConfigError
from pask_ipvs.load import load_config, read_exact
from pask_ipvs.validate import wants_text
from pask_ipvs.yaml_fast import exact_reader_needed, read_fast
from pask_ipvs.yaml_lines import ambiguous_scalars, parse_document
from pask_ipvs.yaml_scalars import ambiguity

REPO = Path(__file__).resolve().parent.parent

AMBIGUOUS = ["yes", "Yes", "NO", "no", "on", "On", "OFF", "off", "y", "Y", "n", "N",
             "010", "00", "-010", "09", "0o17", "0O17", "0x1F", "-0x1F", "0b101",
             "1:20", "190:20:30", "1:20.5", "1_000", "1_0.5", "-1_000",
             "1e3", "1E-3", "1.5e3", "-2e+5", ".inf", "-.Inf", "+.INF", ".nan", ".NaN",
             "2001-12-14", "2001-12-14 21:59:43.10 -5", "2001-12-14T21:59:43Z", "="]
UNAMBIGUOUS = ["80", "0", "-1", "+5", "1.5", "0.5", ".5", "1.", "1.0e+3", "true", "False",
               "TRUE", "null", "~", "Null", "wlc", "dest-nat", "10.99.0.1", "10.99.0.1:9100",
               "2001:db8::1", "fd00::10", "web-01", "svc_01", "a b", "yes please", "one",
               "noon", "0.0.0.0/0", "/healthz", "NOERROR", "2001", "12-14"]


# -- the rule ------------------------------------------------------------------------

@pytest.mark.parametrize("text", AMBIGUOUS)
def test_each_ambiguous_form_is_named_with_its_advice(text):
    message = ambiguity(text)
    assert message is not None and text in message and "quote it" in message


@pytest.mark.parametrize("text", UNAMBIGUOUS)
def test_forms_both_versions_read_alike_are_not_ambiguous(text):
    assert ambiguity(text) is None


@pytest.mark.parametrize("path, text", [
    (("services", 0, "name"), True), (("services", 0, "scheduler"), True),
    (("services", 0, "vip"), True), (("vip_interface",), True),
    (("services", 0, "health", "command", 0), True), (("services", 0, "health", "expect"), True),
    (("services", 0, "port"), False), (("services", 0, "real_servers", 0, "weight"), False),
    (("metrics", "per_server"), False), (("services", 0, "health", "verify_tls"), False),
    (("services", 0, "filters", 0, "dst_port"), False),           # a port or "low-high"
    (("services", 0, "health", "interval"), False), (("version",), False),
    (("no_such_key",), False),
])
def test_the_schema_says_where_only_text_is_wanted(path, text):
    assert wants_text(path) is text


SERVICE = """\
version: 1
services:
  - name: {name}
    vip: 10.99.100.1
    port: {port}
    real_servers:
      - {{address: 10.99.2.11, weight: {weight}}}
"""


def _config(tmp_path, **kw) -> tuple[str, str]:
    values = {"name": "web", "port": "80", "weight": "1", **kw}
    path = tmp_path / "c.yaml"
    path.write_text(SERVICE.format(**values))
    return str(path), path.read_text()


@pytest.mark.parametrize("text", AMBIGUOUS)
def test_an_ambiguous_number_is_an_error_with_file_line_and_advice(tmp_path, text):
    path, _ = _config(tmp_path, weight=text if " " not in text else f"{text}")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = [p for p in err.value.problems if p.path == "$.services[0].real_servers[0].weight"]
    assert problem.line == 7 and problem.file == path
    assert "quote it" in problem.message and "pask does not guess" in problem.message


@pytest.mark.parametrize("text", ["yes", "on", "Off", "y", "010", "1_000", "0o17",
                                  "2001-12-14", ".nan"])
def test_an_ambiguous_scalar_where_a_string_is_wanted_is_its_text(tmp_path, text):
    path, _ = _config(tmp_path, name=text)
    assert load_config(path).services[0].name == text


@pytest.mark.parametrize("text", ["'010'", '"yes"', "'1:20'"])
def test_a_quoted_form_is_a_string_and_the_schema_judges_it(tmp_path, text):
    path, _ = _config(tmp_path, weight=text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = err.value.problems
    assert problem.line == 7 and "pask does not guess" not in problem.message


def test_a_boolean_setting_wants_true_or_false(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\nmetrics:\n  listen: 10.99.0.1:9100\n  per_server: yes\nservices: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    [problem] = err.value.problems
    assert (problem.line, problem.path) == (4, "$.metrics.per_server")
    assert "write true or false" in problem.message
    path.write_text(path.read_text().replace("yes", "true"))
    assert load_config(str(path)).metrics.per_server is True


def test_every_ambiguous_scalar_is_reported_at_once(tmp_path):
    path, _ = _config(tmp_path, port="0x50", weight="010")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [(p.line, p.path) for p in err.value.problems] == [
        (5, "$.services[0].port"), (7, "$.services[0].real_servers[0].weight")]


def test_ambiguous_scalars_are_found_through_merge_keys_and_flow_style():
    text = "base: &b {w: 010}\nx:\n  <<: *b\n  y: [on, 'on', 1]\n"
    data, lines, problems = parse_document("f.yaml", text)
    found = [(path, line, value) for path, line, value, _ in ambiguous_scalars(lines)]
    assert (("base", "w"), 1, "010") in found
    assert (("x", "y", 0), 4, "on") in found
    assert not any(path == ("x", "y", 1) for path, _, _ in found)      # quoted: text


# -- the fast reader: when it answers, and that it answers what the exact one does ----

STARTS = ["a: {}", "- {}", "[{}]", "[x, {}]", "{{a: {}}}", "? {}", '{{"a":{}}}', "a:\n  {}",
          "{}", "a: {}  # note", "a:\n  - b\n  - {}\n"]


@pytest.mark.parametrize("form", STARTS)
@pytest.mark.parametrize("text", AMBIGUOUS)
def test_the_scan_sees_an_ambiguous_scalar_wherever_it_can_stand(form, text):
    doc = form.format(text)
    assert exact_reader_needed(doc), doc
    assert read_fast(doc) is None


@pytest.mark.parametrize("doc", [
    "a: &x 1\nb: *x\n", "a: !!str 1\n", "<<: {a: 1}\n", "%YAML 1.1\n---\na: 1\n",
    "a: 1\n---\nb: 2\n", "a:\tb\n", "a: 1\r\n", "\ufeffa: 1\n", "a: " + "x" * 5000 + "\n",
    "a: x\x01y\n", "a: x\x7fy\n", "a: x\x85y\n", "a: x\x9fy\n", "a: x\u2028y\n", "a: x\u2029y\n",
    "a: x\ufffey\n",
])
def test_features_the_readers_treat_differently_go_to_the_exact_reader(doc):
    assert read_fast(doc) is None


@pytest.mark.parametrize("doc", ["a: x\u00e9y\n", "a: \u00a0x\n", "a: \"\\x41\\N\\L\"\n",
                                 "a: |+\n  x\n\n", "a: 'x\n  z'\n"])
def test_usual_text_beyond_ascii_and_escapes_read_fast_and_alike(doc):
    assert read_fast(doc) == parse_document("f.yaml", doc)[0]


@pytest.mark.parametrize("doc", [
    "a: 1\na: 2\n",             # duplicate key
    "a: [1, 2\n",               # syntax
    "a: 'x\ny'\n",              # PyYAML reads this; yaml-rs does not
])
def test_what_yaml_rs_refuses_goes_to_the_exact_reader(doc):
    assert read_fast(doc) is None


def test_deep_nesting_never_reaches_yaml_rs(tmp_path):
    """yaml-rs crashes the process (SIGSEGV) past ~10,000 levels of block nesting."""
    path = tmp_path / "deep.yaml"
    path.write_text("- " * 20000 + "x\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "nest" in str(err.value)


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_reads_fast_and_loads_as_the_exact_reader_loads_it(example, monkeypatch):
    path = REPO / "examples" / example
    text = path.read_text()
    assert read_fast(text) is not None, "an example that only the exact reader may read"
    if example == "bad.yaml":
        return
    fast = load_config(str(path))
    monkeypatch.setattr(yaml_fast, "read_fast", lambda text: None)
    assert load_config(str(path)) == fast


def test_a_problem_found_after_the_fast_read_still_has_its_line(tmp_path):
    path, _ = _config(tmp_path, weight="70000")
    assert read_fast(Path(path).read_text()) is not None
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = err.value.problems
    assert (problem.line, problem.path) == (7, "$.services[0].real_servers[0].weight")


def test_a_valid_config_never_imports_pyyaml():
    code = ("import sys; from pask_ipvs.load import load_config; "
            "load_config('examples/scale-1024.yaml'); print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# Documents made of plain and quoted scalars in block and flow style: wherever the
# fast reader answers, the exact reader gives the same data and finds nothing ambiguous.
QUOTED = ["''", "'it''s'", '"tab\\tq"', '"\\u00e9"', "'#x'", "'on'", '"010"', "'1:20'"]
ODD = ["a#b", "x: y", "- x", "[x", "&a", "*a", "!t", "'", "9" * 30, "", "a:b", "-", "? x",
       "x\x01y", "x\u2028y", "x\x85y", "k" * 1100]
KEYS = st.sampled_from(["name", "port", "vip", "a", "b", "real_servers", "on_x"])


def _block(value, indent: int) -> str:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return " {}\n"
        return "\n" + "".join(f"{pad}{k}:{_block(v, indent + 2)}" for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return " []\n"
        return "\n" + "".join(f"{pad}-{_block(v, indent + 2)}" for v in value)
    if isinstance(value, tuple):                         # a flow collection
        return " [" + ", ".join(value) + "]\n"
    return f" {value}\n"


def _tree():
    usual = st.sampled_from(UNAMBIGUOUS + QUOTED)         # most documents read fast
    scalar = st.one_of(usual, usual, usual, st.sampled_from(AMBIGUOUS + ODD))
    flow = st.lists(scalar, max_size=3).map(tuple)
    return st.recursive(scalar | flow, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(KEYS, inner, max_size=3), max_leaves=12)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, _tree(), min_size=1, max_size=4))
def test_the_fast_reader_answers_only_what_the_exact_reader_reads(tree):
    doc = _block(tree, 0).lstrip("\n")
    fast = read_fast(doc)
    if fast is None:
        return
    data, lines, problems = parse_document("f.yaml", doc)
    assert not problems
    assert not ambiguous_scalars(lines), doc
    assert _deep_same(fast, data), doc


def _deep_same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_deep_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_deep_same(x, y) for x, y in zip(a, b))
    return _same(a, b)


def test_read_exact_settles_text_and_reports_the_rest():
    doc = SERVICE.format(name="on", port="0x50", weight="1")
    data, _, problems, reported = read_exact("c.yaml", doc)
    assert data["services"][0]["name"] == "on"
    assert reported == {"$.services[0].port"}
    assert [(p.line, p.path) for p in problems] == [(5, "$.services[0].port")]
