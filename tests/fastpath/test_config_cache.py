"""The config cache gives exactly what a full load gives, or falls back to it."""

import os
import pathlib
import random
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pask_ipvs.errors import ConfigError
from pask_ipvs.fastpath import config_cache
from pask_ipvs.fastpath.config_cache import ConfigCache, split_services
from pask_ipvs.load import load_config
from builders import yaml_config, yaml_service

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
VALID = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name not in ("bad.yaml", "scale-1024.yaml"))


def outcome(path, text, cache=None):
    """load's result or its problems, comparable across the two loaders."""
    try:
        config = cache.load(str(path), text) if cache else load_config(str(path), text)
    except ConfigError as e:
        return ("error", [str(p) for p in e.problems])
    return ("ok", config)


@pytest.fixture
def cache_file(tmp_path):
    return str(tmp_path / "state" / config_cache.CACHE_NAME)


def load_twice(path, text, cache_file):
    """First run fills the cache, second run reads it; both must equal the full load."""
    first = ConfigCache(cache_file)
    a = first.load(str(path), text)
    assert first.save()
    second = ConfigCache(cache_file)
    b = second.load(str(path), text)
    return a, b, first.how, second.how


# -- splitting -------------------------------------------------------------------------

@pytest.mark.parametrize("path", VALID + [EXAMPLES / "scale-1024.yaml"], ids=lambda p: p.name)
def test_every_splittable_example_splits_into_its_services(path):
    text = path.read_text()
    split = split_services(text)
    config = load_config(str(path))
    if split is None:   # only for YAML a line split cannot follow
        assert any(c in text for c in config_cache._UNSAFE_CHARS)
        return
    head, items = split
    assert len(items) == len(config.services)
    assert "".join(items) in text
    assert not any(line.startswith("services:") for line in head.splitlines())


def test_split_keeps_indentation_comments_and_the_keys_after_the_block():
    text = ("version: 1\nservices:\n  # first\n  - name: a\n    port: 1\n  # between\n"
            "  - name: b\n# top-level comment\nvip_interface: x\n")
    head, items = split_services(text)
    assert items == ["  - name: a\n    port: 1\n  # between\n", "  - name: b\n# top-level comment\n"]
    assert head == "version: 1\nvip_interface: x\n"


def test_split_items_at_column_zero():
    text = "version: 1\nservices:\n- name: a\n  port: 1\n- name: b\nvip_interface: x"
    head, items = split_services(text)
    assert items == ["- name: a\n  port: 1\n", "- name: b\n"]
    assert head == "version: 1\nvip_interface: x"


@pytest.mark.parametrize("text", [
    "version: 1\nservices: &s\n  - name: a\n",                     # anchor
    "version: 1\nservices:\n  - name: a\n    health: {type: script, command: 'a | b'}\n",
    "version: 1\nservices:\n  - !!map {name: a}\n",                 # tag
    "---\nversion: 1\nservices:\n  - name: a\n",                     # document marker
    "version: 1\nservices:\n\t- name: a\n",                          # tab
    "version: 1\nservices: []\n",                                   # flow style
    "version: 1\nservices:\n  - name: a\nservices:\n  - name: b\n",  # the key twice
    "version: 1\nservices:\n    - name: a\n  - name: b\n",           # items at two columns
    "version: 1\nservices:\n  - name: a\n  port: 80\n",              # a key at the items' column
    "version: 1\nservices:\n  # nothing\nvip_interface: x\n",        # no item
])
def test_unusual_yaml_is_not_split(text):
    assert split_services(text) is None


# -- the cache gives what a full load gives ----------------------------------------------

@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_cached_examples_equal_the_full_load(path, cache_file):
    text = path.read_text()
    a, b, first, second = load_twice(path, text, cache_file)
    assert a == b == load_config(str(path))
    assert first != "cached" and second == "cached"


def test_whole_file_hit_parses_nothing(tmp_path, cache_file, monkeypatch):
    path = tmp_path / "c.yaml"
    text = yaml_config(20)
    want = load_config(str(path), text)
    load_twice(path, text, cache_file)
    import pask_ipvs.yaml_fast as fast_mod
    import pask_ipvs.yaml_lines as lines_mod
    monkeypatch.setattr(lines_mod, "parse_document", lambda *a: pytest.fail("parsed on a hit"))
    monkeypatch.setattr(fast_mod, "read_fast", lambda *a: pytest.fail("parsed on a hit"))
    cache = ConfigCache(cache_file)
    assert cache.load(str(path), text) == want
    assert cache.how == "cached"


def test_a_hit_takes_the_path_it_was_asked_for(tmp_path, cache_file):
    text = yaml_config(3)
    load_twice(tmp_path / "a.yaml", text, cache_file)
    cache = ConfigCache(cache_file)
    assert cache.load(str(tmp_path / "b.yaml"), text).source == str(tmp_path / "b.yaml")
    assert cache.how == "cached"


def test_one_changed_service_is_the_only_one_parsed(tmp_path, cache_file):
    path = tmp_path / "c.yaml"
    text = yaml_config(40)
    load_twice(path, text, cache_file)
    changed = text.replace("{address: 10.99.7.2, port: 8080}", "{address: 10.99.7.2, port: 8080, weight: 5}")
    cache = ConfigCache(cache_file)
    config = cache.load(str(path), changed)
    assert cache.how == "1 of 40 services parsed"
    assert config == load_config(str(path), changed)
    assert config.service("svc-7").real_servers[1].weight == 5
    assert cache.save()
    again = ConfigCache(cache_file)
    assert again.load(str(path), changed) == config and again.how == "cached"


def test_many_changes_take_one_full_load(tmp_path, cache_file):
    path = tmp_path / "c.yaml"
    text = yaml_config(16)
    load_twice(path, text, cache_file)
    changed = text.replace("port: 8080}", "port: 8081}")
    cache = ConfigCache(cache_file)
    assert cache.load(str(path), changed) == load_config(str(path), changed)
    assert cache.how == "full"


def test_a_changed_head_with_cached_services(tmp_path, cache_file):
    path = tmp_path / "c.yaml"
    text = yaml_config(10)
    load_twice(path, text, cache_file)
    changed = text.replace("version: 1\n", "version: 1\nvip_interface: lb0\ndrain_timeout: 30\n")
    cache = ConfigCache(cache_file)
    config = cache.load(str(path), changed)
    assert cache.how == "0 of 10 services parsed"
    assert config == load_config(str(path), changed)
    assert (config.vip_interface, config.drain_timeout) == ("lb0", 30)


def test_the_whole_head_survives_the_cache(tmp_path, cache_file):
    """Every top-level key but services (metrics too) comes back from a cached entry."""
    path = tmp_path / "c.yaml"
    text = yaml_config(5).replace(
        "version: 1\n", 'version: 1\ndrain_timeout: 7\nmetrics: {listen: "[::1]:9640", per_server: false}\n')
    a, b, _, second = load_twice(path, text, cache_file)
    assert second == "cached" and a == b == load_config(str(path), text)
    assert b.metrics.listen == "[::1]:9640" and b.metrics.per_server is False
    moved = text.replace("[::1]:9640", "127.0.0.1:9641")
    cache = ConfigCache(cache_file)
    config = cache.load(str(path), moved)
    assert cache.how == "0 of 5 services parsed"
    assert config == load_config(str(path), moved) and config.metrics.port == 9641


@pytest.mark.parametrize("edit, expect", [
    # a rule between services, broken by the one changed item
    (lambda t: t.replace("name: svc-3\n", "name: svc-4\n"), "duplicate service name"),
    (lambda t: t.replace("vip: 10.99.128.4\n", "vip: 10.99.128.5\n"), "like service"),
    # a problem inside the changed item
    (lambda t: t.replace("{address: 10.99.3.2, port: 8080}", "{address: 10.99.3.2, port: 99999}"),
     "port"),
    (lambda t: t.replace("{address: 10.99.3.2, port: 8080}", "{address: 10.99.3.1, port: 8080}"),
     "duplicate real server"),
    # a problem in the head
    (lambda t: t.replace("version: 1\n", "version: 1\nvip_interface: 'a b'\n"), "vip_interface"),
    (lambda t: t.replace("version: 1\n", "version: 1\nversion: 1\n"), "duplicate key"),
    (lambda t: t.replace("version: 1\n", "version: 2\n"), "version"),
])
def test_problems_come_from_the_full_load_with_its_lines(tmp_path, cache_file, edit, expect):
    path = tmp_path / "c.yaml"
    text = yaml_config(10)
    load_twice(path, text, cache_file)
    changed = edit(text)
    want = outcome(path, changed)
    assert want[0] == "error" and any(expect in p for p in want[1]), want
    assert outcome(path, changed, ConfigCache(cache_file)) == want


def test_nothing_wrong_is_ever_cached(tmp_path, cache_file):
    path = tmp_path / "c.yaml"
    bad = yaml_config(4).replace("port: 80\n", "port: 0\n", 1)
    with pytest.raises(ConfigError):
        ConfigCache(cache_file).load(str(path), bad)
    assert not os.path.exists(cache_file)
    with pytest.raises(ConfigError):
        ConfigCache(cache_file).load(str(path), bad)


# -- the cache file ------------------------------------------------------------------------

def test_a_cache_others_can_write_is_ignored(tmp_path, cache_file):
    path = tmp_path / "c.yaml"
    text = yaml_config(3)
    load_twice(path, text, cache_file)
    os.chmod(cache_file, 0o666)
    cache = ConfigCache(cache_file)
    assert cache.load(str(path), text) == load_config(str(path), text)
    assert cache.how == "full"


def test_a_cache_file_is_private(tmp_path, cache_file):
    load_twice(tmp_path / "c.yaml", yaml_config(2), cache_file)
    assert os.stat(cache_file).st_mode & 0o077 == 0


@pytest.mark.parametrize("garbage", [b"", b"not a pickle", b"\x80\x05K\x01."])
def test_a_corrupt_cache_is_ignored(tmp_path, cache_file, garbage):
    path = tmp_path / "c.yaml"
    text = yaml_config(3)
    os.makedirs(os.path.dirname(cache_file))
    with open(cache_file, "wb") as f:
        f.write(garbage)
    os.chmod(cache_file, 0o600)
    cache = ConfigCache(cache_file)
    assert cache.load(str(path), text) == load_config(str(path), text)
    assert cache.how == "full" and cache.save()
    assert ConfigCache(cache_file).load(str(path), text) == load_config(str(path), text)


def test_new_code_empties_the_cache(tmp_path, cache_file, monkeypatch):
    path = tmp_path / "c.yaml"
    text = yaml_config(3)
    load_twice(path, text, cache_file)
    monkeypatch.setattr(config_cache, "code_digest", lambda: b"other code")
    cache = ConfigCache(cache_file)
    cache.load(str(path), text)
    assert cache.how == "full"


def test_an_unwritable_cache_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = ConfigCache(str(blocker / config_cache.CACHE_NAME))   # its directory is a file
    text = yaml_config(2)
    assert cache.load(str(tmp_path / "c.yaml"), text) == load_config(str(tmp_path / "c.yaml"), text)
    assert cache.save() is False


def test_no_cache_file_means_no_cache():
    cache = ConfigCache(None)
    text = yaml_config(2)
    assert cache.load("c.yaml", text) == load_config("c.yaml", text) and cache.save()


# -- in memory: a resident process (pask-healthd) reloading ------------------------------

def test_a_resident_cache_parses_only_the_edited_service_and_reuses_the_rest(tmp_path):
    path = tmp_path / "c.yaml"
    text = yaml_config(40)
    cache = ConfigCache(None)                    # no file at all: memory only
    first = cache.load(str(path), text)
    changed = text.replace("{address: 10.99.7.2, port: 8080}", "{address: 10.99.7.2, port: 8080, weight: 5}")
    second = cache.load(str(path), changed)
    assert cache.how == "1 of 40 services parsed"
    assert second == load_config(str(path), changed)
    assert all(a is b for a, b in zip(first.services, second.services) if a.name != "svc-7")
    assert second.service("svc-7") is not first.service("svc-7")


def test_a_resident_cache_returns_the_same_file_without_parsing(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    text = yaml_config(5)
    cache = ConfigCache(None)
    first = cache.load(str(path), text)
    import pask_ipvs.yaml_fast as fast_mod
    import pask_ipvs.yaml_lines as lines_mod
    monkeypatch.setattr(lines_mod, "parse_document", lambda *a: pytest.fail("parsed the same file"))
    monkeypatch.setattr(fast_mod, "read_fast", lambda *a: pytest.fail("parsed the same file"))
    assert cache.load(str(path), text) is first and cache.how == "cached"


def test_a_resident_cache_still_reports_problems_with_lines(tmp_path):
    path = tmp_path / "c.yaml"
    text = yaml_config(5)
    cache = ConfigCache(None)
    cache.load(str(path), text)
    bad = text.replace("port: 80\n", "port: 70000\n", 1)
    assert outcome(path, bad, cache) == outcome(path, bad)
    assert outcome(path, bad, cache)[0] == "error"


# -- random edits: always the full load's answer -----------------------------------------

EDITS = ["weight", "reorder", "delete", "duplicate", "rename", "bad_port", "comment", "new",
         "head", "dedent"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(EDITS), st.integers(0, 7)), min_size=1, max_size=4),
       st.sampled_from(["  ", ""]), st.booleans())
def test_random_edits_give_the_full_loads_answer(tmp_path_factory, edits, indent, item_by_item):
    """item_by_item: parse every changed item alone, however many (the small-edit path)."""
    tmp = tmp_path_factory.mktemp("edits")
    path, cache_file = tmp / "c.yaml", str(tmp / "state" / config_cache.CACHE_NAME)
    items = [yaml_service(i, indent=indent) for i in range(8)]
    head = "version: 1\n"
    text = head + "services:\n" + "".join(items)
    load_twice(path, text, cache_file)
    rng = random.Random(len(edits))
    for kind, i in edits:
        i %= len(items) if items else 1
        if not items:
            break
        if kind == "weight":
            items[i] = items[i].replace("port: 8080}", "port: 8080, weight: 7}", 1)
        elif kind == "reorder":
            rng.shuffle(items)
        elif kind == "delete":
            del items[i]
        elif kind == "duplicate":
            items.append(items[i])
        elif kind == "rename":
            items[i] = items[i].replace("name: svc-", "name: renamed-", 1)
        elif kind == "bad_port":
            items[i] = items[i].replace("port: 80\n", "port: 70000\n", 1)
        elif kind == "comment":
            items[i] += f"{indent}# a comment\n"
        elif kind == "new":
            items.append(yaml_service(100 + i, indent=indent, scheduler="rr"))
        elif kind == "head":
            head = "version: 1\ndrain_timeout: 5\n"
        elif kind == "dedent":   # a line left of its item: must never be taken for the head
            items[i] = items[i].replace(f"{indent}  port: 80\n", "port: 80\n", 1)
    changed = head + "services:\n" + "".join(items)
    with mock.patch.object(config_cache, "FULL_PARSE_SHARE", 0 if item_by_item else config_cache.FULL_PARSE_SHARE):
        assert outcome(path, changed, ConfigCache(cache_file)) == outcome(path, changed)
        resident = ConfigCache(None)              # a daemon's reload: its own last load only
        resident.load(str(path), text)
        assert outcome(path, changed, resident) == outcome(path, changed)


def test_big_config_round_trip(tmp_path):
    """1024 services: the cached model equals the full load, and is reused on a re-run."""
    text = (EXAMPLES / "scale-1024.yaml").read_text()
    cache_file = str(tmp_path / config_cache.CACHE_NAME)
    a, b, first, second = load_twice(EXAMPLES / "scale-1024.yaml", text, cache_file)
    assert first == "full" and second == "cached" and a == b
    assert len(b.services) == 1024 and sum(len(s.real_servers) for s in b.services) == 32768


def test_cli_apply_uses_the_cache_beside_the_state_file(tmp_path, capsys):
    from pask_ipvs.backend.fake import fake_backends
    from pask_ipvs.cli.apply import main

    b = fake_backends()

    def apply_main(argv):
        return main(argv, backends=lambda: b)
    cfg = tmp_path / "pask.yaml"
    cfg.write_text(yaml_config(3))
    files = ["--state-file", str(tmp_path / "lib" / "state.json"),
             "--health-file", str(tmp_path / "lib" / "health.json")]
    assert apply_main([*files, "--dry-run", str(cfg)]) == 0
    assert not os.path.exists(tmp_path / "lib" / config_cache.CACHE_NAME)   # a dry run keeps nothing
    capsys.readouterr()
    assert apply_main([*files, "-v", str(cfg)]) == 0
    assert "config: full" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "lib" / config_cache.CACHE_NAME)
    next(iter(b.ipvs.dests.values())).popitem()          # drift: the fast path cannot answer
    assert apply_main([*files, "-v", "--detailed-exitcode", str(cfg)]) == 2
    assert "config: cached" in capsys.readouterr().err
    cfg.write_text(yaml_config(3).replace("port: 8080}", "port: 8080, weight: 4}", 1))
    assert apply_main([*files, "-v", "--detailed-exitcode", str(cfg)]) == 2
    assert "config: 1 of 3 services parsed" in capsys.readouterr().err
    assert apply_main([*files, "--offline", "-v", str(cfg)]) == 0
    assert "config: full" in capsys.readouterr().err          # --offline never uses the cache


# -- a cold load: every item new, parsed in batches -----------------------------------------

def test_a_cold_load_parses_batches_of_items_and_equals_the_full_load(tmp_path, cache_file):
    """No cache: the items are read, validated and modelled BATCH at a time (the file's
    plain data is never whole in memory), and the config is the full load's."""
    from pask_ipvs import yaml_fast

    path = tmp_path / "c.yaml"
    text = yaml_config(150)
    real = yaml_fast.read_fast
    sizes = []
    with mock.patch.object(yaml_fast, "read_fast", lambda t: sizes.append(len(t)) or real(t)):
        cache = ConfigCache(cache_file)
        config = cache.load(str(path), text)
    assert config == load_config(str(path), text) and cache.how == "full"
    assert len(config.services) == 150
    # the head, then ceil(150 / 64) batches, none of them the whole file
    assert len(sizes) == 1 + 3 and max(sizes) < len(text) / 2
    assert cache.save() and ConfigCache(cache_file).load(str(path), text) == config


@pytest.mark.parametrize("edit, expect", [
    # rules between services, broken across batches (items 3 and 140)
    (lambda t: t.replace("name: svc-140\n", "name: svc-3\n"), "duplicate service name"),
    (lambda t: t.replace("vip: 10.99.128.141\n", "vip: 10.99.128.4\n"), "like service"),
    # a problem in the last batch (the child's share), and one in the first (the parent's)
    (lambda t: t.replace("{address: 10.99.130.2, port: 8080}", "{address: 10.99.130.2, port: 99999}"),
     "port"),
    (lambda t: t.replace("{address: 10.99.2.2, port: 8080}", "{address: 10.99.2.2, port: 99999}"),
     "port"),
    # a YAML 1.1 / 1.2 ambiguity in one item: the exact reader's problem, with its line
    (lambda t: t.replace("{address: 10.99.100.2, port: 8080}", "{address: 10.99.100.2, port: 010}"),
     "quote"),
])
@pytest.mark.parametrize("child", [False, True], ids=["one process", "half in a child"])
def test_a_cold_load_with_a_problem_gives_the_full_loads_errors(tmp_path, cache_file, edit, expect,
                                                                 child, with_children):
    children = with_children(child)
    path = tmp_path / "c.yaml"
    changed = edit(yaml_config(150))
    want = outcome(path, changed)
    assert want[0] == "error" and any(expect in p for p in want[1]), want
    assert outcome(path, changed, ConfigCache(cache_file)) == want
    assert len(children) == child
    for started in children:                 # reaped, whether its share was needed or not
        with pytest.raises(ChildProcessError):
            os.waitpid(started.pid, os.WNOHANG)


@pytest.fixture
def with_children(children_on, monkeypatch):
    return lambda on: _with_children(monkeypatch, on)


def _with_children(monkeypatch, on: bool) -> list:
    """Children on (as on a machine of two CPUs, from 2 new items) or off; the list of
    children started fills as they are."""
    from pask_ipvs import forked

    monkeypatch.setenv(forked.ENV, "1" if on else "0")
    monkeypatch.setattr(config_cache, "PARALLEL_MIN", 2)
    started = []
    real = forked.start

    def start(fn, *args):
        child = real(fn, *args)
        if child is not None:
            started.append(child)
        return child
    monkeypatch.setattr(forked, "start", start)
    return started


def test_a_cold_load_parses_half_in_a_child_and_caches_its_models(tmp_path, cache_file, with_children, monkeypatch):
    """Many new items: the second half is parsed in a forked child; the config is the full
    load's, and the child's pickled models are what the cache keeps for those items."""
    children = with_children(True)
    path = tmp_path / "c.yaml"
    text = yaml_config(150)
    cache = ConfigCache(cache_file)
    config = cache.load(str(path), text)
    assert len(children) == 1 and children[0].pid != os.getpid()
    assert config == load_config(str(path), text) and cache.how == "full"
    assert cache.save()
    again = ConfigCache(cache_file)
    assert again.load(str(path), text) == config and again.how == "cached"


def test_a_child_that_dies_leaves_its_share_to_the_parent(tmp_path, cache_file, with_children, monkeypatch):
    children = with_children(True)
    parent = os.getpid()
    real = config_cache._parse_pickled

    def dies_in_the_child(*args):
        if os.getpid() != parent:
            os._exit(9)
        return real(*args)
    monkeypatch.setattr(config_cache, "_parse_pickled", dies_in_the_child)
    path = tmp_path / "c.yaml"
    text = yaml_config(150)
    cache = ConfigCache(cache_file)
    assert cache.load(str(path), text) == load_config(str(path), text)
    assert len(children) == 1
    assert cache.save() and ConfigCache(cache_file).load(str(path), text) == load_config(str(path), text)


def test_few_new_items_start_no_child(tmp_path, cache_file, with_children, monkeypatch):
    children = with_children(True)
    monkeypatch.setattr(config_cache, "PARALLEL_MIN", 256)
    path = tmp_path / "c.yaml"
    text = yaml_config(150)
    assert ConfigCache(cache_file).load(str(path), text) == load_config(str(path), text)
    assert children == []


def test_a_real_server_pickles_to_itself():
    """The cache pickles RealServer by its constructor's arguments: every field comes back."""
    import pickle

    from pask_ipvs.model import RealServer, ServerState

    rs = RealServer("2001:db8::7", 8443, 9, ServerState.BACKUP, False)
    back = pickle.loads(pickle.dumps(rs, pickle.HIGHEST_PROTOCOL))
    assert back == rs and type(back) is RealServer
    assert (back.address, back.port, back.weight, back.state, back.explicit_port) == \
        ("2001:db8::7", 8443, 9, ServerState.BACKUP, False)


# -- the cache written by a forked child, beside the plan ---------------------------------

def test_a_big_save_is_written_by_a_child_beside_the_caller(tmp_path, cache_file, with_children):
    children = with_children(True)
    path, text = tmp_path / "c.yaml", yaml_config(150)
    cache = ConfigCache(cache_file)
    config = cache.load(str(path), text)
    cache.save_begin()
    assert len(children) == 2                      # the load's child, then the save's
    assert cache.save_end() is True
    again = ConfigCache(cache_file)
    assert again.load(str(path), text) == config and again.how == "cached"
    for started in children:
        with pytest.raises(ChildProcessError):
            os.waitpid(started.pid, os.WNOHANG)


def test_a_save_whose_child_dies_is_written_by_the_caller(tmp_path, cache_file, with_children,
                                                          monkeypatch):
    children = with_children(True)
    parent = os.getpid()
    real = ConfigCache.save

    def dies_in_the_child(self):
        if os.getpid() != parent:
            os._exit(3)
        return real(self)
    monkeypatch.setattr(ConfigCache, "save", dies_in_the_child)
    path, text = tmp_path / "c.yaml", yaml_config(150)
    cache = ConfigCache(cache_file)
    config = cache.load(str(path), text)
    cache.save_begin()
    assert cache.save_end() is True and len(children) == 2
    assert ConfigCache(cache_file).load(str(path), text) == config


def test_a_dropped_save_leaves_no_child_and_writes_nothing_more(tmp_path, cache_file, with_children):
    children = with_children(True)
    path, text = tmp_path / "c.yaml", yaml_config(150)
    cache = ConfigCache(cache_file)
    cache.load(str(path), text)
    cache.save_begin()
    cache.save_drop()
    for started in children:
        with pytest.raises(ChildProcessError):
            os.waitpid(started.pid, os.WNOHANG)
    assert cache.save_end() is True                # nothing left to write


def test_a_small_save_waits_for_save_end(tmp_path, cache_file, with_children, monkeypatch):
    children = with_children(True)
    monkeypatch.setattr(config_cache, "PARALLEL_MIN", 256)
    path, text = tmp_path / "c.yaml", yaml_config(3)
    cache = ConfigCache(cache_file)
    config = cache.load(str(path), text)
    cache.save_begin()
    assert children == [] and not os.path.exists(cache_file)
    assert cache.save_end() is True and ConfigCache(cache_file).load(str(path), text) == config


def test_an_apply_writes_the_cache_from_a_child_and_a_failed_plan_leaves_none(tmp_path, with_children,
                                                                             capsys):
    from pask_ipvs.backend.fake import fake_backends
    from pask_ipvs.cli.apply import main

    children = with_children(True)
    cfg = tmp_path / "pask.yaml"
    cfg.write_text(yaml_config(40))
    files = ["--state-file", str(tmp_path / "lib" / "state.json"),
             "--health-file", str(tmp_path / "lib" / "health.json")]
    cache = tmp_path / "lib" / config_cache.CACHE_NAME
    b = fake_backends()
    b.ipvs.available_schedulers = frozenset()         # preflight: no scheduler module: the plan fails
    assert main([*files, str(cfg)], backends=lambda: b) == 1
    assert "ip_vs_" in capsys.readouterr().err and children
    for started in children:                          # none left: the save's child was ended
        with pytest.raises(ChildProcessError):
            os.waitpid(started.pid, os.WNOHANG)
    cache.unlink(missing_ok=True)
    children.clear()
    b = fake_backends()
    assert main([*files, "-v", str(cfg)], backends=lambda: b) == 0
    assert len(children) == 2 and cache.exists()      # the load's child and the save's
    assert main([*files, "-v", "--detailed-exitcode", str(cfg)], backends=lambda: b) == 0
    cfg.write_text(yaml_config(40).replace("port: 8080}", "port: 8080, weight: 4}", 1))
    assert main([*files, "-v", "--detailed-exitcode", str(cfg)], backends=lambda: b) == 2
    assert "config: 1 of 40 services parsed" in capsys.readouterr().err
