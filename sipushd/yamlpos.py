"""YAML loading that remembers where every value came from.

The config loader needs to say *which line* a bad value sits on, so this
module composes the document with `yaml.SafeLoader` (node marks carry line
numbers) and builds plain dicts/lists/scalars itself, recording the line of
each key path. On the way it substitutes `${VAR}` / `${VAR:-default}` in
string values and reports duplicate keys. Every problem is collected as a
`Problem(path, line, message)`; nothing here raises except for YAML syntax
errors, which stop the load (there is no tree to look at).

Rules: keys are taken as written (so `on:` stays the string "on"); a plain
scalar that was changed by substitution is resolved again, so
`port: ${PORT}` gives an int and `token: ${TOKEN:-}` gives null; quoted
scalars stay strings. `$${` writes a literal `${`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

Loc = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_path(loc: Loc) -> str:
    """`("push", "apns", 0, "key_file")` -> `push.apns[0].key_file`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


class Problem(NamedTuple):
    """One thing wrong with a config file: key path, line (1-based) and message."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.path and self.line is not None:
            return f"{self.path} (line {self.line}): {self.message}"
        if self.line is not None:
            return f"line {self.line}: {self.message}"
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message


class YamlSyntaxError(Exception):
    """The text is not valid YAML; `.problem` says where."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class LocatedDocument:
    """Plain data built from a YAML document, with the line of every key path."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int | None:
        """Line of `loc`, or of its nearest ancestor that has one."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def problem(self, loc: Loc, message: str) -> Problem:
        """A `Problem` for `loc` with its line filled in."""
        return Problem(format_path(loc), self.line_of(loc), message)


def load_yaml(text: str, env: Mapping[str, str]) -> LocatedDocument:
    """Parse one YAML document; raise YamlSyntaxError if it is not YAML."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise YamlSyntaxError(_syntax_problem(exc)) from None
        except yaml.YAMLError as exc:
            raise YamlSyntaxError(Problem("", None, f"not valid YAML: {exc}")) from None
        doc = LocatedDocument(data=None)
        if node is not None:
            doc.lines[()] = node.start_mark.line + 1
            doc.data = _Builder(loader, env, doc).build(node, ())
        return doc
    finally:
        loader.dispose()


def _syntax_problem(exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    parts = [p for p in (exc.context, exc.problem) if p]
    message = "YAML syntax error: " + (": ".join(parts) if parts else "invalid document")
    if mark is None:
        return Problem("", None, message)
    return Problem("", mark.line + 1, f"{message} (column {mark.column + 1})")


class _Builder:
    """Turns composed nodes into plain data, recording lines and problems."""

    def __init__(self, loader: yaml.SafeLoader, env: Mapping[str, str], doc: LocatedDocument):
        self.loader = loader
        self.env = env
        self.doc = doc

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            out = []
            for index, item in enumerate(node.value):
                self.doc.lines[(*loc, index)] = item.start_mark.line + 1
                out.append(self.build(item, (*loc, index)))
            return out
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        own = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
        try:
            self.loader.flatten_mapping(node)  # YAML merge keys (`<<: *base`)
        except yaml.MarkedYAMLError as exc:
            self.doc.problems.append(_syntax_problem(exc))
            return {}
        merged = len(node.value) - own
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for position, (key_node, value_node) in enumerate(node.value):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.doc.problems.append(
                    Problem(format_path(loc), line, "keys must be plain names")
                )
                continue
            key = str(key_node.value)
            if key in first_line and position >= merged and first_line[key] > 0:
                message = f"duplicate key {key!r} (first at line {first_line[key]})"
                self.doc.problems.append(Problem(format_path((*loc, key)), line, message))
            # Merged-in keys may be overridden silently; own keys may not repeat.
            first_line[key] = line if position >= merged else 0
            self.doc.lines[(*loc, key)] = line
            out[key] = self.build(value_node, (*loc, key))
        return out

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        if node.tag != _STR_TAG or "$" not in node.value:
            return self.loader.construct_object(node, deep=True)
        text = self._substitute(node.value, loc)
        if node.style is not None or text == node.value:
            return text
        # A plain scalar changed by substitution: resolve its type again.
        resolve = self.loader.resolve
        tag: str = resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        fresh = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark, node.style)
        return self.loader.construct_object(fresh, deep=True)

    def _substitute(self, text: str, loc: Loc) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(1) is None:  # `$${` escapes a literal `${`
                return "${"
            body = _VAR_BODY.fullmatch(match.group(1))
            if body is None:
                self.doc.problems.append(
                    self.doc.problem(loc, f"bad variable reference {match.group(0)!r}")
                )
                return match.group(0)
            name, default = body.group(1), body.group(2)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    self.doc.problems.append(
                        self.doc.problem(loc, f"environment variable {name} is not set")
                    )
                    return ""
                return default
            return value

        return _VAR.sub(replace, text)
