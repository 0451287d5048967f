"""The exact YAML reader: PyYAML (libyaml's parser and composer), with a line for every JSON path.

It reads every YAML file the way pask always has (YAML 1.1, merge keys,
anchors) and it knows where each value is, so every problem keeps
FILE:LINE.  It is the reader of record: the fast reader (yaml_fast.py) is
used only where it gives this one's result, and a config with a problem is
always read here.  Duplicate keys are an error (PyYAML keeps the last
silently, which hides typos).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import yaml

from .errors import ConfigError, PathPart, Problem, format_path, parse_path
from .yaml_scalars import ambiguity

# -- YAML with lines ---------------------------------------------------------------

class LineMap:
    """JSON path -> line in the YAML file, resolved lazily from libyaml's node tree.

    A mapping entry's line is its key's line; a list item's line is where the
    item starts; a path that does not exist (a missing key) resolves to the
    line of the deepest object that does.
    """

    def __init__(self, root: yaml.Node | None):
        self.root = root

    def line(self, path: Sequence[PathPart] | str) -> int:
        if isinstance(path, str):
            path = parse_path(path)
        node = self.root
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            key_node, node = child
            line = key_node.start_mark.line + 1
        return line


def _child(node: yaml.Node, part: PathPart) -> tuple[yaml.Node, yaml.Node] | None:
    """(node that marks the line, value node) of ``part`` inside ``node``."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        found = None
        for key_node, value_node in node.value:       # last wins, as in the constructed dict
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                found = (key_node, value_node)
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item
    return None


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"        # a plain "=", which PyYAML cannot construct


class _Builder:
    """Mixed into a SafeLoader: ``build`` turns the composed nodes into plain data.

    ``build`` is PyYAML's SafeConstructor with fast paths for the common
    tags (3x faster at 1024 x 32), and it refuses duplicate keys.  A key is
    always its text (``on:`` stays "on", not True), so an odd key is reported
    as an unknown key instead of being turned into a bool or an int.
    """

    def __init__(self, stream: str):
        super().__init__(stream)  # type: ignore[call-arg]
        self.duplicates: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []
        self.complex_keys: list[tuple[yaml.MappingNode, yaml.Node]] = []
        self._active: set[int] = set()
        self._tags: dict[str, str] = {}

    def resolve(self, kind, value, implicit):  # type: ignore[override]
        """Memoised implicit tag of a plain scalar (keys and values repeat a lot)."""
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return super().resolve(kind, value, implicit)

    def build(self, node: yaml.Node) -> object:
        cls = type(node)
        if cls is yaml.ScalarNode:
            tag = node.tag
            if tag == _STR or tag == _VALUE:
                return node.value
            if tag == _INT:
                v = node.value
                if v.isascii() and v.isdigit() and (v[0] != "0" or len(v) == 1):
                    return int(v)
            return self.construct_object(node, deep=True)
        if id(node) in self._active:
            raise yaml.constructor.ConstructorError(
                None, None, "a recursive alias (an anchor used inside itself) is not allowed",
                node.start_mark)
        if cls is yaml.SequenceNode and node.tag == _SEQ:
            self._active.add(id(node))
            out = [self.build(item) for item in node.value]
            self._active.discard(id(node))
            return out
        if cls is yaml.MappingNode and node.tag == _MAP:
            self._active.add(id(node))
            out = self._build_mapping(node)
            self._active.discard(id(node))
            return out
        return self.construct_object(node, deep=True)      # !!set, !!binary, ...

    def _build_mapping(self, node: yaml.MappingNode) -> dict:
        pairs = node.value
        merged = any(k.tag == _MERGE for k, _ in pairs)
        if merged:
            self._check_duplicates(node, pairs)
            self.flatten_mapping(node)                      # merge keys (<<): own keys win
            pairs = node.value
        mapping: dict[str, object] = {}
        for key_node, value_node in pairs:
            if type(key_node) is yaml.ScalarNode:
                key = key_node.value
            else:
                self.complex_keys.append((node, key_node))
                key = f"<{key_node.id} key at line {key_node.start_mark.line + 1}>"
            mapping[key] = self.build(value_node)
        if not merged and len(mapping) != len(pairs):
            self._check_duplicates(node, pairs)
        return mapping

    def _check_duplicates(self, node: yaml.MappingNode, pairs: list) -> None:
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in pairs:
            if isinstance(key_node, yaml.ScalarNode):
                first = seen.setdefault(key_node.value, key_node)
                if first is not key_node:
                    self.duplicates.append((node, key_node, first))

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        """Mappings reached through PyYAML's own constructors (e.g. inside !!set)."""
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
            return self._build_mapping(node)
        return super().construct_mapping(node, deep)


class _PyLoader(_Builder, yaml.SafeLoader):
    """Pure Python: same results, ~10x slower; used only where PyYAML lacks libyaml."""


if getattr(yaml, "__with_libyaml__", False):
    class _Loader(_Builder, yaml.CSafeLoader):
        """libyaml's parser and composer (C) + the fast builder."""
else:                                                       # pragma: no cover
    _Loader = _PyLoader  # type: ignore[misc]


def _walk(root: yaml.Node) -> Iterator[tuple[yaml.Node, tuple[PathPart, ...]]]:
    """Every node with its JSON path; a collection reached again through an alias is
    entered once (so a recursive alias ends)."""
    stack: list[tuple[yaml.Node, tuple[PathPart, ...]]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        yield node, path
        if isinstance(node, yaml.ScalarNode) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, path + (k.value,)) for k, v in node.value if isinstance(k, yaml.ScalarNode))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, path + (i,)) for i, v in enumerate(node.value))


def _node_path(root: yaml.Node, target: yaml.Node) -> tuple[PathPart, ...]:
    """JSON path of ``target`` in the tree (only used for the rare duplicate-key report)."""
    return next((path for node, path in _walk(root) if node is target), ())


def _yaml_problem(path: str, e: yaml.YAMLError) -> Problem:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    text = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return Problem(path, line, "$", text)


def parse_document(path: str, text: str) -> tuple[object, LineMap, list[Problem]]:
    """YAML text -> (data, lines, problems that still let validation go on: duplicate keys).

    Raises ConfigError when the text is not YAML at all (nothing else can be checked).
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.build(root) if root is not None else None
    except RecursionError:
        raise ConfigError([Problem(path, 1, "$", "the document is nested too deeply")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(path, e)]) from None
    finally:
        loader.dispose()
    problems = []
    for mapping, key_node, first in loader.duplicates:
        where = _node_path(root, mapping) + (key_node.value,)
        problems.append(Problem(
            path, key_node.start_mark.line + 1, format_path(where),
            f"duplicate key {key_node.value!r} (first at line {first.start_mark.line + 1}); "
            "each key may appear once"))
    for mapping, key_node in loader.complex_keys:
        problems.append(Problem(
            path, key_node.start_mark.line + 1, format_path(_node_path(root, mapping)),
            f"a key must be a plain name, not a {key_node.id}"))
    return data, LineMap(root), problems


def ambiguous_scalars(lines: LineMap) -> list[tuple[tuple[PathPart, ...], int, str, str]]:
    """(path, line, text, problem) of every plain value scalar that YAML 1.1 and 1.2 read
    differently (yaml_scalars.py), at each path it is reached by."""
    found = []
    if lines.root is None:
        return found
    for node, path in _walk(lines.root):
        if isinstance(node, yaml.ScalarNode) and not node.style:    # plain: "" (libyaml) or None
            message = ambiguity(node.value)
            if message is not None:
                found.append((path, node.start_mark.line + 1, node.value, message))
    found.sort(key=lambda f: f[1])
    return found
