"""Percent scripts (``# %%`` cells) read as jupytext reads them, with the standard library.

jupytext is the reference (``tests/test_percent.py`` compares the two on every test and sample
notebook, and on the corner cases below); importing it costs ~1.5 s, which is more than all of
``nb2pipe check`` on a large notebook, so this module does the same reading itself:

* a YAML header between ``# ---`` lines: its ``jupyter`` key is the notebook metadata
  (``kubeflow_notebook`` included); other top-level keys become a first raw cell;
* a cell starts at ``# %%`` followed by a space or the end of the line, outside strings;
  ``[markdown]``/``[md]``/``[raw]`` set the cell type, a title may come first, and
  ``key=value`` pairs (JSON or Python literals) are the cell's metadata (``tags=[...]``);
* markdown and raw cells are uncommented; in code cells, magics and shell lines that jupytext
  writes commented out (``# %matplotlib inline``, ``# !ls``, ``# files = !ls``, ``# cd dir``)
  are uncommented again; a ``language="bash"`` cell becomes a ``%%bash`` cell;
* one blank line (or two, PEP 8 style) before the next marker separates the cells.

PyYAML (a dependency) is imported only when a script has a header.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from .diagnostics import NotebookError, error
from .notebook import Cell, Notebook

_START = re.compile(r"^\s*#\s*%%%*\s(.*)$")
_START_BARE = re.compile(r"^\s*#\s*(%%|<codecell>|In\[[0-9 ]*\]:?)\s*$")
_HEADER_FENCE = re.compile(r"^---\s*$")
_ENCODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-_.a-zA-Z0-9]+)")
_BLANK = re.compile(r"^\s*$")
_IDENTIFIER = re.compile(r"^[a-zA-Z_.]+[a-zA-Z0-9_.]*$")
_METADATA_KEY = re.compile(r"^[a-zA-Z0-9_.@/-]+$")
_FENCE = re.compile(r"^(`{3,}|~{3,})")

# Magics and shell commands as jupytext recognises them (commented any number of times).
_MAGIC = re.compile(r"^\s*(# |#)*(%|%%|%%%)[a-zA-Z]")
_MAGIC_ESCAPE = re.compile(r"^\s*(# |#)*(%|%%|%%%)[a-zA-Z](.*)#\s*escape")
_MAGIC_NO_ESCAPE = re.compile(r"^\s*(# |#)*(%|%%|%%%)[a-zA-Z](.*)#\s*noescape")
_HELP_OR_SHELL = re.compile(r"^\s*(?:(?:# |#)+\s*)?(\?|!)\s*[A-Za-z.~$\\/{}]")
_MAGIC_ASSIGN = re.compile(r"^(# |#)*\s*([a-zA-Z_][a-zA-Z_$0-9]*)\s*=\s*(%|%%|%%%|!)[a-zA-Z](.*)")
_HELP = re.compile(r"^\s*(# )*[^\s]*\?\s*$")
_SHELL_WORD = re.compile(
    r"^(# |#)*(cat|cd|cp|mv|rm|rmdir|mkdir|copy|ddir|echo|ls|ldir|ren)($|\s$|\s[^=,])")
_CONTINUED = re.compile(r".*\\\s*$")
_SHELL_FIRST = frozenset("#cdelmr")
_BARE_HINT = re.compile(r"<codecell>|In\[")
_QUOTE_OR_HASH = re.compile(r"[\"'#]")


def read_percent(text: str, path: Path | None = None) -> Notebook:
    """The notebook a percent script holds; ``Cell.first_line`` is its first line in the file."""
    lines = text.splitlines()
    metadata, header_cell, pos = _header(lines)
    cells: list[Cell] = []
    if header_cell is not None:
        cells.append(Cell(index=1, kind="raw", source=header_cell, first_line=1))
    strings = _Strings()
    quoted = [False] * len(lines)  # whether each line starts inside a string
    start = pos
    for i in range(pos, len(lines) + 1):
        at_end = i == len(lines)
        if not at_end:
            line = lines[i]
            quoted[i] = strings.quoted()
            if (i == start or "%%" not in line and not _BARE_HINT.search(line)
                    or quoted[i] or not _is_start(line) or _in_fence(lines, start, i)):
                strings.read(line)
                continue
        if i > start:
            cells.append(_cell(lines[start:i], start, len(cells) + 1, quoted[start:i]))
        start = i
        if not at_end:
            strings = _Strings()
            strings.read(lines[i])
    return Notebook(path=path, cells=tuple(cells), metadata=metadata, format="percent")


def _is_start(line: str) -> bool:
    return bool(_START.match(line) or _START_BARE.match(line))


# --- the YAML header ---------------------------------------------------------------------------

def _header(lines: list[str]) -> tuple[dict[str, Any], str | None, int]:
    """The ``jupyter`` metadata, a raw cell for other header keys, and where cells begin."""
    first = 0
    if lines and lines[0].startswith("#!"):
        first = 1
    if len(lines) > first and _ENCODING.match(lines[first]):
        first += 1
    if len(lines) <= first or not _HEADER_FENCE.match(_uncomment(lines[first])):
        return {}, None, first
    jupyter: list[tuple[int, str]] = []  # (file line, text)
    other: list[str] = []
    in_jupyter = False
    for end in range(first + 1, len(lines)):
        if not lines[end].startswith("#"):
            return {}, None, first
        line = _uncomment(lines[end])
        if _HEADER_FENCE.match(line):
            break
        if re.match(r"^jupyter\s*:\s*$", line):
            in_jupyter = True
        elif line and not line[0].isspace():
            in_jupyter = False
        if in_jupyter:
            jupyter.append((end + 1, line))
        else:
            other.append(line)
    else:
        return {}, None, first
    metadata = _yaml_metadata(jupyter)
    pos = end + 1
    if pos < len(lines) and _BLANK.match(_uncomment(lines[pos])):
        pos += 1
    raw = "\n".join(["---", *other, "---"]) if other else None
    return metadata, raw, pos


def _yaml_metadata(jupyter: list[tuple[int, str]]) -> dict[str, Any]:
    if not jupyter:
        return {}
    simple = _simple_yaml([text for _, text in jupyter])
    if simple is not None:
        metadata = simple.get("jupyter")
        return metadata if isinstance(metadata, dict) else {}
    import yaml  # type: ignore[import-untyped]  # a dependency; only headers need it

    try:
        loaded = yaml.safe_load("\n".join(text for _, text in jupyter))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = jupyter[min(mark.line, len(jupyter) - 1)][0] if mark else jupyter[0][0]
        reason = getattr(exc, "problem", None) or "not valid YAML"
        raise NotebookError(error(
            "NB002", f"line {at}: the script's YAML header is not valid YAML ({reason}); "
            "fix the YAML between the '# ---' lines"
        )) from None
    metadata = loaded.get("jupyter") if isinstance(loaded, dict) else None
    return metadata if isinstance(metadata, dict) else {}


_YAML_KEY = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_.-]*):(?: (.*))?$")
_YAML_WORD = re.compile(
    r"^[A-Za-z_/.][A-Za-z0-9_./@+():-]*(?: [A-Za-z0-9_./@+()-][A-Za-z0-9_./@+():-]*)*$")
_YAML_SPECIAL = frozenset({"yes", "no", "on", "off", "y", "n", "true", "false", "null",
                           ".inf", ".nan"})


def _simple_yaml(lines: list[str]) -> dict[str, Any] | None:
    """The block mappings of plain scalars that jupytext writes, without importing PyYAML
    (~85 ms); None for anything else (lists, flow style, comments, tags...): PyYAML reads it."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    expect_deeper = False
    for line in lines:
        match = _YAML_KEY.match(line)
        if match is None:
            return None
        indent, key, raw = len(match.group(1)), match.group(2), (match.group(3) or "").strip()
        if expect_deeper and indent <= stack[-1][0]:
            return None  # an empty value: None in YAML, left to PyYAML
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        if key in parent:
            return None
        if not raw:
            child: dict[str, Any] = {}
            parent[key] = child
            stack.append((indent, child))
            expect_deeper = True
            continue
        value = _yaml_scalar(raw)
        if value is _NOT_SIMPLE:
            return None
        parent[key] = value
        expect_deeper = False
    return None if expect_deeper else root


_NOT_SIMPLE = object()


def _yaml_scalar(raw: str) -> object:
    if len(raw) >= 2 and raw[0] == raw[-1] == "'" and "'" not in raw[1:-1]:
        return raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"' and not set(raw[1:-1]) & {'"', "\\"}:
        return raw[1:-1]
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", raw):
        return int(raw)
    if re.fullmatch(r"-?[0-9]+\.[0-9]+", raw):
        return float(raw)
    if re.fullmatch(r"[0-9]+(\.[0-9]+){2,}", raw):  # a version such as 1.19.7: a string
        return raw
    if raw in ("true", "false"):
        return raw == "true"
    if (_YAML_WORD.match(raw) and raw.lower() not in _YAML_SPECIAL and not raw.endswith(":")
            and ": " not in raw):
        return raw
    return _NOT_SIMPLE


# --- one cell ----------------------------------------------------------------------------------

def _cell(lines: list[str], start: int, index: int, quoted: list[bool]) -> Cell:
    """The cell made of ``lines`` (its marker first, if any); ``start`` is its file index;
    ``quoted`` says which lines start inside a string."""
    has_marker = _is_start(lines[0])
    metadata, kind = _marker_metadata(lines[0], index, start + 1) if has_marker else ({}, "code")
    body = _trim_end(lines[1:] if has_marker else lines)
    first_line = start + 1 + (1 if has_marker else 0)
    language = metadata.get("language")
    if kind != "code":
        body = [_uncomment(line) for line in body]
    elif isinstance(language, str) and language != "python":
        body = [f"%%{language}", *(_uncomment(line) for line in body)]
        first_line -= 1  # the marker line stands for the %%language line
    else:
        body = _uncomment_magics(body, quoted[1:] if has_marker else quoted)
    return Cell(index=index, kind=kind, source="\n".join(body),
                tags=_tags(metadata, index, start + 1), first_line=first_line)


def _trim_end(body: list[str]) -> list[str]:
    """Without the blank line(s) that separate the cell from the next (one, or PEP 8's two)."""
    if len(body) >= 3 and not _BLANK.match(body[-3]) and _BLANK.match(body[-2]) \
            and _BLANK.match(body[-1]):
        return body[:-2]
    if body and body[-1] == "":
        return body[:-1]
    return body


def _marker_metadata(marker: str, index: int, file_line: int) -> tuple[dict[str, Any], str]:
    """The metadata and cell type written on a ``# %%`` line."""
    start = _START.match(marker)
    options = _uncomment(marker)
    options = options[options.find("%%") + 2:] if start else ""
    title, metadata = _title_and_metadata(options.strip(), index, file_line)
    kind = "code"
    for name in ("markdown", "raw", "md"):
        if f"[{name}]" in title:
            kind = "raw" if name == "raw" else "markdown"
            break
    cell_type = metadata.pop("cell_type", None)
    if cell_type in ("code", "markdown", "raw"):
        kind = cell_type
    return metadata, kind


def _title_and_metadata(text: str, index: int, file_line: int) -> tuple[str, dict[str, Any]]:
    curly, equal = text.find("{"), text.find("=")
    if curly >= 0 and not 0 <= equal < curly:  # JSON metadata after the title
        return text[:curly].strip(), _literal(text[curly:], index, file_line, "metadata")
    if equal >= 0:
        words = text[:equal].split(" ")
        while words and not words[-1]:
            words.pop()
        if words:
            words.pop()  # the key of the first key=value pair
    else:
        words = text.split(" ")
    while words and (not words[-1].strip() or words[-1].startswith(".")):
        words.pop()
    title = " ".join(words)
    return title, _key_values(text[len(title):], index, file_line)


def _key_values(text: str, index: int, file_line: int) -> dict[str, Any]:
    """``key1=value1 key2=value2``, split from the right as jupytext does."""
    text = text.strip()
    if not text:
        return {}
    last_space = text.rfind(" ")
    if not text.startswith("--") and _IDENTIFIER.match(text[last_space + 1:]):
        found = _key_values(text[:last_space], index, file_line) if last_space > 0 else {}
        found.setdefault(text[last_space + 1:], None)
        return found
    equal: int | None = None
    while True:
        equal = text.rfind("=", None, equal)
        if equal < 0:
            _bad_tags(text, index, file_line)
            return {}
        space = text[:equal].rstrip().rfind(" ")
        key = text[space + 1:equal].strip()
        if not _METADATA_KEY.match(key):
            continue
        try:
            value = _loads(text[equal + 1:])
        except (ValueError, SyntaxError):
            continue
        found = _key_values(text[:space], index, file_line) if space > 0 else {}
        found[key] = value
        return found


def _loads(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


def _literal(text: str, index: int, file_line: int, what: str) -> dict[str, Any]:
    try:
        value = _loads(text)
    except (ValueError, SyntaxError):
        _bad_tags(text, index, file_line)
        return {}
    return value if isinstance(value, dict) else {}


def _bad_tags(text: str, index: int, file_line: int) -> None:
    if re.search(r"\btags\s*=", text):
        raise NotebookError(error(
            "NB002", f'line {file_line}: tags must be a JSON list of strings, like '
            'tags=["step:load"]', cell=index, line=0))


def _tags(metadata: dict[str, Any], index: int, file_line: int) -> tuple[str, ...]:
    tags = metadata.get("tags")
    if tags is None:
        return ()
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise NotebookError(error("NB002", f"line {file_line}: tags must be strings",
                                  cell=index))
    return tuple(t.strip() for t in tags if t.strip())


# --- comments, magics, strings -----------------------------------------------------------------

def _uncomment(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    return line[1:] if line.startswith("#") else line


def _uncomment_magics(body: list[str], quoted: list[bool]) -> list[str]:
    """Magics and shell lines, written commented out, as they are in the notebook."""
    out = []
    continued = False
    for line, in_string in zip(body, quoted, strict=False):  # body: without the blank end
        if not in_string and (continued or _is_magic(line)):
            stripped = line.lstrip()
            indent = line[:len(line) - len(stripped)]
            out.append(indent + _uncomment(stripped))
            continued = bool(_CONTINUED.match(line))
        else:
            out.append(line)
    return out


def _is_magic(line: str) -> bool:
    if "%" not in line and "!" not in line and "?" not in line:
        # the only form without one of those characters: a shell word first
        return line[:1] in _SHELL_FIRST and bool(_SHELL_WORD.match(line))
    if _MAGIC_ESCAPE.match(line):
        return True
    if _MAGIC_NO_ESCAPE.match(line):
        return False
    return bool(_MAGIC.match(line) or _HELP_OR_SHELL.match(line) or _MAGIC_ASSIGN.match(line)
                or _HELP.match(line) or _SHELL_WORD.match(line))


def _in_fence(lines: list[str], start: int, i: int) -> bool:
    """Whether line ``i`` of the markdown/raw cell that starts at ``start`` is in a ``` block."""
    if not re.search(r"\[(markdown|md|raw)\]", lines[start]):
        return False
    fence = None
    for j in range(start + 1, i):
        text = _uncomment(lines[j])
        if fence:
            if _closes(text, fence):
                fence = None
            continue
        match = _FENCE.match(text)
        if match and any(_closes(_uncomment(n), match.group(1)) for n in lines[j + 1:]):
            fence = match.group(1)
    return fence is not None


def _closes(text: str, fence: str) -> bool:
    stripped = text.strip()
    return stripped.startswith(fence) and not stripped.strip(fence[0])


class _Strings:
    """Whether the next line starts inside a Python string (a ``# %%`` there is no marker)."""

    def __init__(self) -> None:
        self.single: str | None = None
        self.triple: str | None = None

    def quoted(self) -> bool:
        return bool(self.single or self.triple)

    def read(self, line: str) -> None:
        if not self.quoted() and line.lstrip().startswith("#"):
            return
        if self.triple is not None and 3 * self.triple not in line:
            return
        if self.triple is None and '"' not in line and "'" not in line:
            return
        triple_start = -1
        for match in _QUOTE_OR_HASH.finditer(line):
            i, char = match.start(), match.group()
            if self.single is None and self.triple is None and char == "#":
                break
            if char == "#" or line[i - 1:i] == "\\":
                continue
            if self.single == char:
                self.single = None
            elif self.single is not None:
                continue
            elif line[i - 2:i + 1] == 3 * char and i >= triple_start + 3:
                if self.triple == char:
                    self.triple, triple_start = None, i
                elif self.triple is None:
                    self.triple, triple_start = char, i
            elif self.triple is None:
                self.single = char
        self.single = None
