"""Which names a notebook cell reads, binds and may mutate.

The graph builder decides which step provides each variable to which other step. It
needs three facts per cell: the names the cell may read before binding them (``free``),
the names it may (re)bind (``binds``) and the names whose objects it may change in place
(``mutates``). Getting ``free`` too small breaks sequential equivalence (a step fails
with ``NameError`` or sees a stale value); getting it too large only costs a load.
So every rule below errs on the side of "may read", "may bind", "may mutate".

The analysis is flow-sensitive at module level, like the interpreter: a name bound only
in an ``if`` without ``else``, a loop body, a ``try`` body or a ``with suppress()`` body
may still hold an earlier cell's value afterwards, so a later read counts as free.
Function bodies run later, so their module-level reads are recorded per function
(:class:`FunctionInfo`) and charged to whoever calls the function.

Only the standard library is used: the command line imports this module and must start
fast. IPython syntax (magics, ``!shell``, ``obj?``) is neutralised by :func:`strip_magics`
before parsing, with line numbers preserved so positions stay cell-relative.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .string_reads import StringNote

__all__ = [
    "CodeAnalysis",
    "CodeSyntaxError",
    "FunctionInfo",
    "MagicLine",
    "NameUse",
    "analyse_source",
    "function_closure",
    "function_writes",
    "strip_magics",
]


# --------------------------------------------------------------------------------------
# Public results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameUse:
    """A name at a position: line is 1-based within the cell, col 0-based (characters)."""

    name: str
    line: int
    col: int


@dataclass(frozen=True)
class FunctionInfo:
    """What a module-level function or class touches when it is *called* (or used).

    ``globals_read``: module-level names its body reads at call time, nested functions,
    lambdas and comprehensions included (decorators and default values are read at
    definition time and are not here). For a class: the union over its methods and
    the lambdas in its body.
    ``globals_written``: module-level names it rebinds (``global x; x = ...``) or may
    mutate in place (``x.append(...)``).
    ``parameters``: its parameter names in order, ``*args`` and ``**kwargs`` with their
    stars, a bare ``*`` as ``"*"``.
    ``mutated_parameters``: the parameters whose objects it may change in place
    (directly, through a local alias, or by handing them on); None when unknown (a
    class, a decorated function): then every argument may be changed.
    ``later_reads``: the names in ``globals_read`` that only code running after the call
    reads (nested functions and lambdas it returns or hands on, a decorator's wrapper);
    for a class, all of them (its methods run when called, not when it is).
    ``read_at``: the line (in the analysed source) of the first read of each global.
    ``is_class``: a class rather than a function or lambda.
    """

    name: str
    globals_read: frozenset[str]
    globals_written: frozenset[str]
    line: int
    parameters: tuple[str, ...] = ()
    mutated_parameters: frozenset[str] | None = None
    later_reads: frozenset[str] = frozenset()
    read_at: tuple[tuple[str, int], ...] = ()
    is_class: bool = False


@dataclass(frozen=True)
class MagicLine:
    """An IPython line that is not Python: kind is line_magic, cell_magic or shell."""

    line: int
    kind: str
    text: str


@dataclass(frozen=True)
class CodeAnalysis:
    """The analysis of one cell (or of several cells' joined source).

    ``free``: names that may be read before any binding in this source, first use of
    each, in source order. Builtins are not filtered.
    ``binds``: module-level names this source may (re)bind or delete.
    ``mutates``: module-level names whose objects this source may change in place.
    ``deletes``: names ``del``-eted at module level that may be unbound at the end, the
    name of an ``except ... as name`` clause included (the clause deletes it as it ends):
    those are also in ``clause_deletes``.
    ``functions``: module-level functions and classes defined here (last one wins);
    ``name = lambda ...`` counts as a function too.
    ``maybe_free``: the names in ``free`` that are bound on some path before every
    read of them (a loop body, one branch, a try body, a comprehension's walrus). If
    no earlier cell provides them, the cell may still run: not certainly an error.
    ``partial_binds``: the names in ``binds`` that some path leaves as they were before
    the source ran (or unbound). A step providing such a name must start from the
    earlier value to save the right one.
    ``shares``: sets of module-level names whose objects may be shared once the source ran
    (``clf_list = [(lr, "lr")]``); ``returns``: for the functions it defines, the
    parameters their result may hold; see :mod:`kale_py.sharing`.
    ``callback_free``: names read by code that *may* run from a point on (a function or
    lambda handed on or stored, a class, a value holding such code) and not bound before
    that point. Not in ``free``: a provider supplies them if there is one, and no
    provider is not by itself an error (the code may run only after a later binding).
    ``deferred_via``: for names in ``free`` or ``callback_free`` first read by such
    code, the function, class or variable holding it and the line of the read in this
    source (0 when the code was defined elsewhere).
    ``code_held``: module-level names whose values may hold code defined in a notebook
    (a lambda in a dict, an instance, a partial), with the globals that code reads.
    """

    free: tuple[NameUse, ...]
    binds: frozenset[str]
    mutates: frozenset[str]
    deletes: frozenset[str]
    functions: dict[str, FunctionInfo]
    star_imports: tuple[NameUse, ...]
    magics: tuple[MagicLine, ...]
    maybe_free: frozenset[str] = frozenset()
    partial_binds: frozenset[str] = frozenset()
    clause_deletes: frozenset[str] = frozenset()
    shares: tuple[frozenset[str], ...] = ()  # module-level names that may share objects
    rebound: frozenset[str] = frozenset()  # names whose earlier sharing ends here
    returns: Mapping[str, tuple[tuple[str, ...], frozenset[str]]] | None = None
    callback_free: tuple[NameUse, ...] = ()
    deferred_via: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    code_held: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # formulas and pandas expressions whose names cannot be read (built at run time)
    string_notes: tuple[StringNote, ...] = ()
    # names bound to a formula model, with what its formula reads: (name, certain)
    carries: Mapping[str, tuple[tuple[str, bool], ...]] = field(default_factory=dict)

    @property
    def free_names(self) -> frozenset[str]:
        return frozenset(use.name for use in self.free)


class CodeSyntaxError(Exception):
    """The cell is not valid Python (after removing IPython syntax).

    ``line`` is 1-based within the cell, ``col`` 0-based.
    """

    def __init__(self, message: str, line: int, col: int) -> None:
        # All three go to Exception so that the error survives pickling between processes.
        super().__init__(message, line, col)
        self.message = message
        self.line = line
        self.col = col

    def __str__(self) -> str:
        return f"{self.message} (line {self.line}, column {self.col + 1})"


# --------------------------------------------------------------------------------------
# IPython syntax
# --------------------------------------------------------------------------------------

# A quick filter: sources without any of these cannot contain IPython syntax (see
# _maybe_magic).
_MAGIC_FIRST_LINE = re.compile(r"[ \t\f]*[%!?]")
_MAGIC_LINE = re.compile(r"\n[ \t\f]*[%!?]")
_HELP_AT_END = re.compile(r"\?[ \t]*$", re.MULTILINE)
_ASSIGNED_MAGIC = re.compile(r"=[ \t]*[!%]")
_NEWLINE = re.compile(r"(\r\n|\r|\n)")
_INTERESTING = re.compile(r"[\"'#()\[\]{}\\]")
_STRING_END = {q: re.compile(r"\\.|" + re.escape(q)) for q in ("'", '"', "'''", '"""')}
_HELP_SUFFIX = re.compile(r"%{0,2}[A-Za-z_*][\w*]*(?:\.[A-Za-z_*][\w*]*)*\?{1,2}[ \t]*")
_ASSIGN_MAGIC = re.compile(r"(?P<lhs>[^=#!%<>'\"]+?)[ \t]*=[ \t]*(?P<op>[!%])(?P<rest>.*)")
_MAGIC_NAME = re.compile(r"%*(?P<name>[\w.]*)[ \t]*(?P<rest>.*)", re.DOTALL)

# Cell magics whose body is Python run in the user namespace; any other cell magic's
# body (bash, html, writefile, script ...) is opaque text.
_PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})
# Line magics whose argument is a Python statement (getopt option letters, as IPython).
_STATEMENT_MAGICS = {"time": "", "timeit": "n:r:tcp:qo", "prun": "D:l:rs:T:q", "debug": ""}


def strip_magics(source: str) -> tuple[str, tuple[MagicLine, ...]]:
    """Python source with IPython syntax replaced, line count preserved.

    Line magics, ``!shell`` lines and help syntax become ``pass`` (indentation kept, as
    they may sit inside blocks); ``x = !cmd`` and ``x = %magic`` keep a binding of
    ``x``; ``%time stmt``, ``%timeit stmt`` and ``%prun stmt`` keep ``stmt``. A first
    line ``%%magic`` keeps the body when it is Python (%%time, %%timeit, %%capture,
    %%prun, %%debug) and blanks it otherwise. Only lines that start a logical statement
    are transformed: strings, bracketed and backslash continuations are left alone.
    """
    if not _maybe_magic(source):
        return source, ()
    parts = _NEWLINE.split(source)
    lines = parts[0::2]
    magics: list[MagicLine] = []
    start = _cell_magic(lines, magics)
    if start is None:
        return _join_lines(parts, lines), tuple(magics)
    depth, quote, continued = 0, "", False
    i = start
    while i < len(lines):
        line = lines[i]
        if depth == 0 and not quote and not continued:
            end = _line_magic(lines, i, magics)
            if end > i:
                i = end
                continue
        depth, quote, continued = _scan_line(line, depth, quote)
        i += 1
    return _join_lines(parts, lines), tuple(magics)


def _maybe_magic(source: str) -> bool:
    """A quick filter: whether ``source`` may hold IPython syntax, as the search for
    ``^[ \\t\\f]*[%!?]|\\?[ \\t]*$|=[ \\t]*[!%]`` (multiline) would say; one pattern at a
    time, each starting with a fixed character, is much faster to search."""
    return (_MAGIC_FIRST_LINE.match(source) is not None
            or _MAGIC_LINE.search(source) is not None
            or ("?" in source and _HELP_AT_END.search(source) is not None)
            or _ASSIGNED_MAGIC.search(source) is not None)


def _join_lines(parts: list[str], lines: list[str]) -> str:
    parts[0::2] = lines
    return "".join(parts)


def _cell_magic(lines: list[str], magics: list[MagicLine]) -> int | None:
    """Handle a ``%%magic`` first line; the index to scan from, or None if done."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or not lines[first].lstrip().startswith("%%"):
        return 0
    text = lines[first].strip()
    match = _MAGIC_NAME.match(text)
    name = match.group("name") if match else ""
    magics.append(MagicLine(first + 1, "cell_magic", text))
    if name not in _PYTHON_CELL_MAGICS:
        for i in range(first, len(lines)):
            lines[i] = ""
        return None
    lines[first] = "pass"
    if name == "capture" and match:
        # %%capture [--no-stdout ...] [var]: the output object is assigned to var.
        target = next((a for a in match.group("rest").split() if not a.startswith("-")), "")
        if target.isidentifier():
            lines[first] = f"{target} = None"
    return first + 1


def _line_magic(lines: list[str], i: int, magics: list[MagicLine]) -> int:
    """Rewrite the statement starting at line i if it is IPython syntax.

    Returns the index after the statement (i when it is plain Python)."""
    line = lines[i]
    stripped = line.lstrip(" \t\f")
    indent = line[: len(line) - len(stripped)]
    end = i + 1
    # IPython joins backslash-continued magic lines into one command.
    while end < len(lines) and lines[end - 1].rstrip().endswith("\\"):
        end += 1
    text = "\n".join(lines[i:end]).strip()
    head = stripped[:1]
    replacement: str | None = None
    if head == "!":
        magics.append(MagicLine(i + 1, "shell", text))
        replacement = "pass"
    elif head in ("%", "?") or _HELP_SUFFIX.fullmatch(stripped):
        magics.append(MagicLine(i + 1, "line_magic", text))
        replacement = _statement_magic(text) if head == "%" else "pass"
    else:
        match = _ASSIGN_MAGIC.fullmatch(stripped)
        if match is None or match.group("lhs").rstrip()[-1:] in "+-*/|&^@:.,([":
            return i
        op, lhs = match.group("op"), match.group("lhs").strip()
        magics.append(MagicLine(i + 1, "shell" if op == "!" else "line_magic", text))
        value = _statement_magic("%" + match.group("rest")) if op == "%" else "pass"
        if value == "pass" or not _parses(f"{lhs} = {value}"):
            value = "None"
        replacement = f"{lhs} = {value}"
    lines[i] = indent + replacement
    for j in range(i + 1, end):
        lines[j] = ""
    return end


def _statement_magic(text: str) -> str:
    """The Python statement inside ``%time stmt`` (and friends), else ``pass``."""
    match = _MAGIC_NAME.match(text.lstrip("%"))
    if match is None or match.group("name") not in _STATEMENT_MAGICS:
        return "pass"
    rest = match.group("rest").replace("\\\n", " ").strip()
    statement = _drop_options(rest, _STATEMENT_MAGICS[match.group("name")])
    if statement and "\n" not in statement and _parses(statement):
        return statement
    return "pass"


def _drop_options(args: str, spec: str) -> str:
    """Remove leading getopt-style options (``-n 10 -r3``) from a magic's arguments."""
    while args.startswith("-") and not args.startswith("--"):
        word, _, args = args.partition(" ")
        args = args.lstrip()
        letters = word[1:]
        for k, letter in enumerate(letters):
            if letter + ":" in spec:
                if k == len(letters) - 1:  # the value is the next word
                    _, _, args = args.partition(" ")
                    args = args.lstrip()
                break
    return args


def _parses(code: str) -> bool:
    try:
        _parse_quietly(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _scan_line(line: str, depth: int, quote: str) -> tuple[int, str, bool]:
    """Bracket depth, open string quote and backslash continuation after one line."""
    i = 0
    if quote:
        i = _string_end(line, 0, quote)
        if i < 0:
            return depth, _continued_string(line, quote), False
    while True:
        match = _INTERESTING.search(line, i)
        if match is None:
            return depth, "", False
        char, i = match.group(), match.end()
        if char == "#":
            return depth, "", False
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == "\\":
            if i >= len(line):
                return depth, "", True
            i += 1
        else:
            quote = char * 3 if line.startswith(char * 3, i - 1) else char
            i = _string_end(line, i - 1 + len(quote), quote)
            if i < 0:
                return depth, _continued_string(line, quote), False


def _string_end(line: str, i: int, quote: str) -> int:
    """Index just after the closing quote, or -1 if the string goes on."""
    pattern = _STRING_END[quote]
    while True:
        match = pattern.search(line, i)
        if match is None:
            return -1
        if match.group() == quote:
            return match.end()
        i = match.end()


def _continued_string(line: str, quote: str) -> str:
    # A one-quote string only continues past a line end after a backslash.
    return quote if len(quote) == 3 or line.endswith("\\") else ""


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def analyse_source(
    source: str,
    functions: Mapping[str, FunctionInfo] | None = None,
    code_held: Mapping[str, frozenset[str]] | None = None,
    returns: Mapping[str, tuple[tuple[str, ...], frozenset[str]]] | None = None,
) -> CodeAnalysis:
    """Parse one cell (IPython syntax allowed) and analyse it.

    ``functions``: functions defined by earlier cells (their ``FunctionInfo``). Passing
    them makes calls to them precise: only the arguments they may change count as
    mutated, and calling them does not count as changing them; and their global reads
    count where this source calls them (``free``) or hands them on (``callback_free``).
    ``code_held``: the ``code_held`` of earlier cells: reading such a name may run the code
    it holds, so that code's reads count from there on (``callback_free``).
    ``returns``: what functions of earlier cells return (``CodeAnalysis.returns``), for
    the names that may share objects.
    Raises :class:`CodeSyntaxError` with the cell-relative line when it is not Python.
    """
    tree, text, magics = _parse_cell(source)
    from .sharing import function_returns, module_shares  # noqa: PLC0415 (builds on this)

    try:
        analysis = _Analyser(text, functions or {}, code_held or {}).run(tree, magics)
        own = function_returns(tree, text)
        shares, rebound = module_shares(tree, returns, text, own)
        return replace(analysis, shares=shares, rebound=rebound, returns=own or None)
    except RecursionError:
        raise CodeSyntaxError("code is nested too deeply", 1, 0) from None


def _parse_cell(source: str) -> tuple[ast.Module, str, tuple[MagicLine, ...]]:
    if "\0" in source:
        line, col = _position(source, source.index("\0"))
        raise CodeSyntaxError("source code cannot contain null bytes", line, col)
    try:
        return _parse_checked(source), source, ()
    except SyntaxError as error:
        # Any IPython syntax makes a cell invalid Python, so valid cells skip the scan.
        text, magics = strip_magics(source)
        if not magics:
            raise _syntax_error(error, source) from None
    try:
        return _parse_checked(text), text, magics
    except SyntaxError as error:
        raise _syntax_error(error, text) from None


def _parse_checked(source: str) -> ast.Module:
    """ast.parse, with every failure other than SyntaxError turned into CodeSyntaxError."""
    try:
        return _parse_quietly(source)
    except (MemoryError, RecursionError):
        # The parser's own stack limit ("too complex to parse") or deep AST construction.
        raise CodeSyntaxError("code is nested too deeply", 1, 0) from None
    except UnicodeEncodeError as error:
        line, col = _position(source, error.start)
        raise CodeSyntaxError("invalid character in source", line, col) from None
    except ValueError as error:
        raise CodeSyntaxError(str(error), 1, 0) from None


def _parse_quietly(source: str) -> ast.Module:
    """ast.parse without parse-time warnings.

    Invalid escapes and the like warn while parsing; the user sees them when the cell
    runs, and a warnings-as-errors setting must not turn them into syntax errors here.
    Silencing warnings costs as much as a third of a parse, so it is done only for
    sources with a backslash (every invalid escape has one) and on the error path.
    """
    if "\\" not in source:
        try:
            return ast.parse(source)
        except SyntaxError:
            pass  # maybe a warning turned into an error: try again below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source)


def _syntax_error(error: SyntaxError, source: str) -> CodeSyntaxError:
    n_lines = source.count("\n") + source.count("\r") - source.count("\r\n") + 1
    line = min(max(error.lineno or 1, 1), n_lines + 1)
    col = max((error.offset or 1) - 1, 0)
    return CodeSyntaxError(error.msg or "invalid syntax", line, col)


def _position(source: str, index: int) -> tuple[int, int]:
    before = _NEWLINE.split(source[:index])
    return len(before) // 2 + 1, len(before[-1])


# --------------------------------------------------------------------------------------
# What counts as mutation
# --------------------------------------------------------------------------------------

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Methods that leave their receiver (and their arguments) unchanged, unless called with
# inplace=True. Being wrong here loses a mutation, so only well-known names are listed.
_PURE_METHODS = _words(
    """
    head tail describe copy mean median sum std var min max count nunique unique
    value_counts predict predict_proba predict_log_proba decision_function score
    score_samples transform inverse_transform get keys values items index rindex find
    rfind startswith endswith lower upper strip lstrip rstrip split rsplit splitlines
    join format format_map replace title capitalize casefold center ljust rjust zfill
    partition rpartition encode decode isdigit isalpha isalnum isnumeric isspace isupper
    islower groupby agg aggregate apply map applymap astype to_numpy to_list tolist
    to_dict to_csv to_json to_parquet to_pickle to_string to_html to_markdown to_records
    to_frame to_excel reshape flatten ravel argmax argmin argsort idxmax idxmin any all
    round dot isna isnull notna notnull fillna dropna drop drop_duplicates duplicated
    merge sort_values sort_index reset_index set_index rename query filter corr cov
    pivot pivot_table melt stack unstack explode transpose sample nlargest nsmallest clip
    abs cumsum cumprod cummax cummin prod quantile diff pct_change shift rolling
    expanding resample equals isin between where mask select_dtypes assign get_params
    get_feature_names_out evaluate summary nonzero squeeze item tobytes take repeat
    searchsorted most_common difference intersection union symmetric_difference issubset
    issuperset isdisjoint eq ne lt le gt ge sub mul div truediv floordiv mod pow
    """
)

# Methods that change their receiver but not their arguments.
_ARGUMENT_SAFE_METHODS = _words(
    """
    fit fit_transform fit_predict partial_fit append add insert extend update setdefault
    write writelines put plot scatter hist bar barh pie imshow boxplot errorbar
    fill_between set_title set_xlabel set_ylabel set_xticks set_yticks legend text
    annotate axhline axvline savefig
    """
)

# Library functions known not to change their arguments, also when called dotted.
_PURE_LIBRARY_FUNCTIONS = _words(
    """
    deepcopy train_test_split accuracy_score f1_score precision_score recall_score
    roc_auc_score mean_squared_error mean_absolute_error r2_score confusion_matrix
    classification_report log_loss roc_curve precision_recall_curve auc
    balanced_accuracy_score
    """
)
# ... and builtins (plus IPython's display), by bare name only: ``obj.print(x)`` is unknown.
_PURE_FUNCTIONS = _PURE_LIBRARY_FUNCTIONS | _words(
    """
    print len str repr int float bool complex bytes list tuple dict set frozenset sorted
    reversed enumerate zip range isinstance issubclass type id hash sum min max abs
    round any all format hasattr getattr iter divmod pow ord chr bin hex oct vars dir
    callable display ascii copy open
    """
)

# Functions known not to change their arguments, by module alias and function name.
_PURE_BY_MODULE: dict[str, frozenset[str]] = {
    "np": _words(
        """
        array asarray asanyarray mean sum concatenate stack vstack hstack column_stack
        unique where argmax argmin max min amax amin std var median percentile quantile
        zeros_like ones_like full_like empty_like copy abs absolute sqrt exp log log1p
        log2 log10 dot matmul transpose reshape ravel clip round around isnan isinf
        isfinite nan_to_num cumsum cumprod diff sort argsort allclose array_equal isclose
        count_nonzero nonzero bincount histogram corrcoef cov prod any all maximum minimum
        add subtract multiply divide power sin cos tan tanh arctan2 floor ceil sign
        expand_dims squeeze tile repeat split array_split atleast_1d atleast_2d einsum
        outer inner cross norm inv pinv det eig eigh svd solve lstsq triu tril diag
        average nanmean nansum nanmax nanmin nanstd digitize searchsorted interp polyfit
        polyval roll flip isin setdiff1d intersect1d union1d logical_and logical_or
        logical_not equal greater less greater_equal less_equal not_equal linspace arange
        """
    ),
    "pd": _words(
        """
        concat DataFrame Series merge merge_asof to_datetime to_numeric to_timedelta
        get_dummies crosstab pivot_table cut qcut isna isnull notna notnull unique
        value_counts melt Index Categorical factorize
        """
    ),
    "plt": _words(
        """
        plot scatter hist hist2d bar barh pie imshow matshow boxplot violinplot errorbar
        fill_between title xlabel ylabel xticks yticks xlim ylim legend text annotate
        axhline axvline contour contourf colorbar hexbin stem step stackplot loglog
        semilogx semilogy suptitle
        """
    ),
    "json": frozenset({"dumps", "loads"}),
    "copy": frozenset({"copy", "deepcopy"}),
}
_MODULE_SYNONYMS = {"numpy": "np", "pandas": "pd", "pyplot": "plt"}
# Modules whose every function leaves its arguments alone.
_PURE_MODULES = frozenset({"math", "sns", "seaborn", "statistics"})
# Conventional module aliases: calling their functions is not a mutation of the alias.
_MODULE_ALIASES = _words(
    "np numpy pd pandas plt sns seaborn matplotlib tf torch os sys math json re scipy sklearn"
)
# Builtin classes passed as arguments (``defaultdict(list)``, ``suppress(KeyError)``,
# ``map(str, xs)``) are not data; the few that double as variable names are kept.
_BUILTIN_TYPES = frozenset(
    name for name, value in vars(builtins).items()
    if isinstance(value, type) and not name.startswith("_")
) - {"filter", "map", "object"}
_BUILTIN_NAMES = frozenset(vars(builtins))
# Context managers that swallow exceptions: their body may stop anywhere.
_SUPPRESSING = frozenset({"suppress", "raises", "assertRaises", "assertRaisesRegex"})
# Calls whose result shares objects with their arguments (for aliasing).
_PASS_THROUGH = frozenset({"enumerate", "zip", "reversed", "iter", "list", "tuple",
                           "sorted", "filter", "next", "dict", "set", "frozenset"})
_ELEMENT_VIEWS = frozenset({"values", "items", "__iter__"})

# Annotations are evaluated at definition time up to Python 3.13 (PEP 649 defers them).
_EAGER_ANNOTATIONS = sys.version_info < (3, 14)


def _root_name(node: ast.expr) -> str | None:
    """The variable at the root of ``x.a[0].b`` or of a method chain ``x.get(k).y``."""
    while True:
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _held_names(node: ast.expr) -> Iterator[ast.Name]:
    """Variables whose objects an argument expression hands over (``x``, ``x[0]``, ``[x]``)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    if isinstance(node, ast.Name):
        yield node
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        for element in node.elts:
            yield from _held_names(element)
    elif isinstance(node, ast.Dict):
        for value in node.values:
            yield from _held_names(value)


def _shared_names(node: ast.expr) -> set[str]:
    """Variables whose objects the value of an expression may share (for aliasing)."""
    names = {name.id for name in _held_names(node)}
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in _PASS_THROUGH:
            for arg in node.args:
                names |= _shared_names(arg)
        elif isinstance(func, ast.Attribute) and func.attr in _ELEMENT_VIEWS:
            root = _root_name(func.value)
            if root is not None:
                names.add(root)
    elif isinstance(node, ast.IfExp):
        names |= _shared_names(node.body) | _shared_names(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            names |= _shared_names(value)
    elif isinstance(node, ast.NamedExpr):
        names |= _shared_names(node.value)
    return names


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    parts.reverse()
    return parts


def _is_pure_call(func: ast.expr) -> bool:
    """Whether a callee is known to leave its arguments unchanged."""
    if isinstance(func, ast.Name):
        return func.id in _PURE_FUNCTIONS
    parts = _dotted(func)
    if parts is None:
        return False
    if parts[-1] in _PURE_LIBRARY_FUNCTIONS or parts[0] in _PURE_MODULES:
        return True
    for part in parts[-2::-1]:
        module = _MODULE_SYNONYMS.get(part, part)
        if module in _PURE_BY_MODULE:
            return parts[-1] in _PURE_BY_MODULE[module]
    return False


def _inplace(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "inplace":
            value = keyword.value
            return not (isinstance(value, ast.Constant) and not value.value)
    return False


def _is_suppressing(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return name in _SUPPRESSING


def _irrefutable(pattern: ast.pattern) -> bool:
    if isinstance(pattern, ast.MatchAs):
        return pattern.pattern is None or _irrefutable(pattern.pattern)
    if isinstance(pattern, ast.MatchOr):
        return any(_irrefutable(p) for p in pattern.patterns)
    return False


def _parameters(args: ast.arguments) -> set[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if args.vararg:
        every.append(args.vararg)
    if args.kwarg:
        every.append(args.kwarg)
    return {arg.arg for arg in every}


def _parameter_list(args: ast.arguments) -> tuple[str, ...]:
    """Parameter names in call order, with ``*`` and ``**`` marking the catch-alls."""
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if args.vararg:
        names.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        names.append("*")
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg:
        names.append("**" + args.kwarg.arg)
    return tuple(names)


# Calls whose result holds the callables handed to them.
_KEEPING_CALLS = _words(
    "partial partialmethod map filter vectorize lru_cache cache wraps update_wrapper "
    "property staticmethod classmethod singledispatch cached_property"
)


# The callees whose string arguments string_reads.call_reads reads (its CALLEES, which a
# test keeps equal): formula functions and pandas' query and eval.
_STRING_CALLEES = _words(
    """
    conditional_logit conditional_mnlogit conditional_poisson gee glm glmgam gls glsar
    logit mixedlm mnlogit negativebinomial nominal_gee ols ordinal_gee phreg poisson probit
    quantreg rlm wls dmatrix dmatrices incr_dbuilder incr_dbuilders model_matrix Formula
    query eval from_formula
    """
)


# Builtins that run the functions handed to them before returning (``key=``); pandas-style
# methods in _PURE_METHODS (apply, map, agg, ...) do too.
_RUNS_ARGUMENTS = _words("sorted min max")


# Decorators that call the function with the caller's arguments unchanged.
_TRANSPARENT_DECORATORS = frozenset({"lru_cache", "cache", "wraps", "jit", "njit"})


def _is_transparent(decorator: ast.expr) -> bool:
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    parts = _dotted(decorator)
    return parts is not None and parts[-1] in _TRANSPARENT_DECORATORS


def _changed_arguments(call: ast.Call, info: FunctionInfo | None) -> Iterator[ast.expr]:
    """The argument expressions of a call whose objects the callee may change."""
    mutated = None if info is None else info.mutated_parameters
    unpacked = any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords)
    if info is None or mutated is None or unpacked:
        yield from call.args
        yield from (k.value for k in call.keywords)
        return
    parameters = info.parameters
    star = next((i for i, p in enumerate(parameters) if p.startswith("*")), len(parameters))
    varargs = parameters[star] if star < len(parameters) and parameters[star][1:2] not in (
        "", "*") else None
    kwargs = parameters[-1] if parameters and parameters[-1].startswith("**") else None
    for index, arg in enumerate(call.args):
        parameter = parameters[index] if index < star else varargs
        if parameter is None or parameter in mutated:
            yield arg
    for keyword in call.keywords:
        parameter = keyword.arg if keyword.arg in parameters else kwargs
        if parameter is None or parameter in mutated:
            yield keyword.value


def _read_lines(reads: Mapping[str, ast.AST]) -> tuple[tuple[str, int], ...]:
    return tuple((name, getattr(node, "lineno", 0)) for name, node in reads.items())


def _type_parameters(node: ast.AST) -> list[ast.AST]:
    # PEP 695 generics (Python 3.12+): ``def f[T](x: T)``, ``class C[T]``, ``type X[T]``.
    params: list[ast.AST] = getattr(node, "type_params", None) or []
    return params


def _target_names(node: ast.expr) -> Iterator[str]:
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            yield from _target_names(element)
    elif isinstance(node, ast.Starred):
        yield from _target_names(node.value)


# --------------------------------------------------------------------------------------
# Scopes and flow state
# --------------------------------------------------------------------------------------


class _Flow:
    """Flow-sensitive binding state of the module or of a class body.

    must: bound on every path to here; may: bound on some path; dead: unreachable
    (after raise/break/continue). dels records names unbound, in order, so that
    regions (a try body) can ask what they deleted.
    """

    __slots__ = ("must", "may", "dead", "dels")

    def __init__(self) -> None:
        self.must: set[str] = set()
        self.may: set[str] = set()
        self.dead = False
        self.dels: list[str] = []

    def save(self) -> _State:
        return _State(set(self.must), set(self.may), self.dead)

    def restore(self, state: _State) -> None:
        self.must = set(state.must)
        self.may = set(state.may)
        self.dead = state.dead


class _State:
    """A flow state saved at one point (see _Flow). (Plain classes, not dataclasses, for
    the private records: making a dataclass costs as much as compiling a small module.)"""

    __slots__ = ("must", "may", "dead")

    def __init__(self, must: set[str], may: set[str], dead: bool) -> None:
        self.must = must
        self.may = may
        self.dead = dead


def _join(states: Iterable[_State]) -> _State:
    """The state where paths meet: bound on all live paths, maybe-bound on any."""
    live = [s for s in states if not s.dead]
    may: set[str] = set()
    for state in live or states:
        may |= state.may
    if not live:
        return _State(set(), may, True)
    must = set(live[0].must)
    for state in live[1:]:
        must &= state.must
    return _State(must, may, False)


_FUNCTION, _LAMBDA, _CLASS, _COMPREHENSION, _TYPE_PARAMS = range(5)


def _through_aliases(names: Iterable[str], scope: _Scope) -> set[str]:
    """The names and every name of ``scope`` they may share objects with."""
    result = set(names)
    if not scope.aliases and not scope.outer_aliases:
        return result
    pending = list(result)
    while pending:
        name = pending.pop()
        for source in (*scope.aliases.get(name, ()), *scope.outer_aliases.get(name, ())):
            if source not in result:
                result.add(source)
                pending.append(source)
    return result


class _Scope:
    """A scope nested in the module: function, lambda, class, comprehension, generics.

    An *immediate* scope runs while the module code runs (class bodies, comprehensions
    and generic-parameter scopes at module level): its reads are resolved on the spot.
    A *deferred* scope (a function body and everything inside it) runs later: its reads
    are collected and resolved when it ends, when all its local names are known.
    """

    __slots__ = ("kind", "parent", "immediate", "locals", "declared_global", "nonlocals",
                 "loads", "mutated", "global_loads", "global_mutated", "global_writes",
                 "flow", "aliases", "outer_aliases", "closed_mutated", "later")

    def __init__(self, kind: int, parent: _Scope | None) -> None:
        self.kind = kind
        self.parent = parent
        self.immediate: bool = kind not in (_FUNCTION, _LAMBDA) and (
            parent is None or parent.immediate)
        self.locals: set[str] = set()
        self.declared_global: set[str] = set()
        self.nonlocals: set[str] = set()
        self.loads: dict[str, ast.AST] = {}
        self.mutated: set[str] = set()
        self.global_loads: dict[str, ast.AST] = {}
        self.global_mutated: set[str] = set()
        self.global_writes: set[str] = set()
        self.flow = _Flow() if kind == _CLASS else None
        # Local names that may share objects with other names (``q = p``, ``for r in p``):
        # an in-place change through them changes those too. outer_aliases: sources
        # that live in the enclosing scope (a comprehension's first iterable).
        self.aliases: dict[str, set[str]] = {}
        self.outer_aliases: dict[str, set[str]] = {}
        self.closed_mutated: set[str] = set()
        # Names in ``loads`` read only by nested functions and lambdas: they run later.
        self.later: set[str] = set()

    def visible_parent(self) -> _Scope | None:
        """The enclosing scope a nested function sees: class bodies are skipped."""
        scope = self.parent
        while scope is not None and scope.kind == _CLASS:
            scope = scope.parent
        return scope


class _Globals:
    """Module-level names a function body (or a lambda) reads and writes."""

    __slots__ = ("reads", "mutated", "written", "later")

    def __init__(self, reads: dict[str, ast.AST], mutated: set[str], written: set[str]
                 ) -> None:
        self.reads = reads
        self.mutated = mutated
        self.written = written
        self.later: set[str] = set()  # read only by nested code


class _Owner:
    """The module-level def or class whose call-time globals are being collected."""

    __slots__ = ("reads", "writes", "direct")

    def __init__(self) -> None:
        self.reads: dict[str, ast.AST] = {}
        self.writes: set[str] = set()
        self.direct: set[str] = set()  # read by the body itself when it runs

    def later(self) -> frozenset[str]:
        return frozenset(self.reads.keys() - self.direct)


class _Loop:
    __slots__ = ("breaks", "continues")

    def __init__(self) -> None:
        self.breaks: list[_State] = []
        self.continues: list[_State] = []


# --------------------------------------------------------------------------------------
# The analyser
# --------------------------------------------------------------------------------------


class _Analyser:
    """One walk over a module's AST in evaluation order."""

    def __init__(self, source: str, known: Mapping[str, FunctionInfo],
                 held_in: Mapping[str, frozenset[str]]) -> None:
        self.source = source
        self.known = known  # functions of earlier cells
        self.held_in = held_in  # names of earlier cells holding code, with its reads
        # Deferred reads: code that may run from a point on (handed on, stored), the
        # function or value it came through, and the sets of reads being gathered for the
        # value of an assignment (which then holds that code).
        self.callback: dict[str, ast.AST] = {}
        self.via: dict[str, tuple[str, ast.AST | None]] = {}
        self.code_held: dict[str, set[str]] = {}
        # Reads of the code a value being built holds: appended while ``collecting``,
        # taken from a mark (see _gather, _gathered).
        self.held: list[str] = []
        self.collecting = 0
        self.calling: ast.expr | None = None  # the callee Name of the call being walked
        self.operand = 0  # inside an arithmetic or comparison operand
        # Functions and lambdas handed straight to a call that runs them before it
        # returns (``sorted(key=f)``, ``df.apply(lambda r: ...)``): they run here.
        self.run_now: set[ast.AST] = set()
        self.stored_lambda: ast.Lambda | None = None  # ``name = lambda``: a function
        self.closures: dict[str, dict[str, tuple[str, bool]]] = {}
        self.closure_names: set[str] = set()  # every name the cached closures depend on
        self.read_nodes: dict[str, Mapping[str, ast.AST]] = {}
        self.scope: _Scope | None = None
        self.flow = _Flow()  # the module's
        self.free: dict[str, ast.AST] = {}
        self.read_directly: set[str] = set()
        self.definite: set[str] = set()
        self.definite_log: list[str] = []
        self.binds: set[str] = set()
        self.mutates: set[str] = set()
        self.deleted: set[str] = set()
        self.clause_deleted: set[str] = set()  # by the end of an ``except ... as`` clause
        self.imported: set[str] = set()
        self.aliases: dict[str, set[str]] = {}
        self.functions: dict[str, FunctionInfo] = {}
        self.writes_of: dict[str, frozenset[str]] = {}  # function_writes, until a new def
        self.star_imports: list[NameUse] = []
        self.star_seen = False
        self.owner: _Owner | None = None
        self.loops: list[_Loop] = []
        self.lambdas: dict[ast.Lambda, _Globals] = {}
        self.lambda_parameters: dict[ast.Lambda, frozenset[str]] = {}
        self.string_notes: list[StringNote] = []
        self.carry: list[tuple[str, bool]] | None = None  # formula reads of the value assigned
        self.carries: dict[str, tuple[tuple[str, bool], ...]] = {}
        self.soft_read = False  # a name a formula may take from its data frame instead
        # Walrus is the only way an expression binds; most cells have none, which lets
        # expressions skip saving and restoring the flow state.
        self.walrus = ":=" in source
        self.future_annotations = False
        self.lines: list[str] | None = None
        self.stmt_handlers = self._statement_handlers()
        self.expr_handlers = self._expression_handlers()

    def run(self, tree: ast.Module, magics: tuple[MagicLine, ...]) -> CodeAnalysis:
        self.future_annotations = any(
            isinstance(s, ast.ImportFrom) and s.module == "__future__"
            and any(a.name == "annotations" for a in s.names) for s in tree.body)
        self._block(tree.body)
        free = sorted((self._use(name, node) for name, node in self.free.items()),
                      key=lambda use: (use.line, use.col))
        exit_must = self.flow.must
        return CodeAnalysis(
            free=tuple(free),
            binds=frozenset(self.binds),
            mutates=frozenset(self.mutates),
            deletes=frozenset(self.deleted - exit_must),
            clause_deletes=frozenset(self.clause_deleted - exit_must),
            functions=self.functions,
            star_imports=tuple(self.star_imports),
            magics=magics,
            maybe_free=frozenset(self.free.keys() - self._definitely_free()),
            partial_binds=frozenset(self.binds - exit_must),
            callback_free=tuple(sorted(
                (self._use(name, node) for name, node in self.callback.items()
                 if name not in self.free), key=lambda use: (use.line, use.col))),
            deferred_via={name: (via, getattr(node, "lineno", 0) if node is not None else 0)
                          for name, (via, node) in self.via.items()
                          if name not in self.read_directly},
            code_held={name: frozenset(reads) for name, reads in self.code_held.items()
                       if reads},
            string_notes=tuple(self.string_notes),
            carries=self.carries,
        )

    def _definitely_free(self) -> set[str]:
        # A function or lambda may well run only after a later line of this source binds
        # the global it reads: names read only by such code, and bound here, are maybe.
        return self.definite - (self.binds - self.read_directly)

    def _use(self, name: str, node: ast.AST) -> NameUse:
        line: int = getattr(node, "lineno", 1)
        col: int = getattr(node, "col_offset", 0)
        if self.lines is None:
            self.lines = _NEWLINE.split(self.source)[0::2]
        if line <= len(self.lines) and not self.lines[line - 1].isascii():
            # ast columns count UTF-8 bytes; people count characters.
            encoded = self.lines[line - 1].encode("utf-8", "surrogatepass")
            col = len(encoded[:col].decode("utf-8", "ignore"))
        return NameUse(name, line, col)

    # ---- reading, binding, mutating names -------------------------------------------

    def _load(self, name: str, node: ast.AST, mutate: bool = False) -> None:
        scope = self.scope
        if scope is None:
            self._module_read(name, node, mutate)
        elif scope.immediate:
            self._immediate_load(scope, name, node, mutate)
        else:
            self._deferred_load(scope, name, node, mutate)

    def _immediate_load(self, scope: _Scope, name: str, node: ast.AST, mutate: bool) -> None:
        current: _Scope | None = scope
        while current is not None:
            if current.kind == _CLASS:
                # A class body sees its own names (if bound by now), nested scopes do not.
                if current is scope:
                    assert current.flow is not None
                    if name in current.declared_global:
                        break
                    if name in current.flow.must:
                        return
            elif name in current.locals:
                if mutate:
                    self._mutate_sources(current, name, node)
                return
            current = current.parent
        self._module_read(name, node, mutate)

    def _mutate_sources(self, scope: _Scope, name: str, node: ast.AST) -> None:
        """An in-place change through a comprehension variable changes what it iterates."""
        for source in scope.outer_aliases.get(name, ()):
            self._mutate_in(scope.parent, source, node)
        for source in scope.aliases.get(name, set()) - {name}:
            self._mutate_in(scope, source, node)

    def _mutate_in(self, scope: _Scope | None, name: str, node: ast.AST) -> None:
        saved, self.scope = self.scope, scope
        self._mutate(name, node)
        self.scope = saved

    def _deferred_load(self, scope: _Scope, name: str, node: ast.AST, mutate: bool) -> None:
        if name in scope.declared_global:
            scope.global_loads.setdefault(name, node)
            if mutate:
                scope.global_mutated.add(name)
            return
        if scope.kind == _CLASS:
            assert scope.flow is not None
            if name in scope.flow.must:
                return
            # Not bound in the class body yet: the enclosing function's or a global.
            target = scope.visible_parent()
            assert target is not None
            self._deferred_load(target, name, node, mutate)
            return
        if name in scope.nonlocals:
            return
        scope.loads.setdefault(name, node)
        if scope.later:
            scope.later.discard(name)
        if mutate:
            scope.mutated.add(name)

    def _module_read(self, name: str, node: ast.AST, mutate: bool,
                     deferred: bool = False) -> None:
        flow = self.flow
        if name not in flow.must:
            self._record_free(name, node, deferred)
        if mutate:
            self._mutate_module(name)
        if name in self.functions or (name in self.known and name not in self.binds):
            self._use_function(name, node)
        elif name in self.code_held or name in self.held_in:
            self._use_holder(name, node)

    def _record_free(self, name: str, node: ast.AST, deferred: bool = False,
                     via: tuple[str, ast.AST | None] | None = None) -> None:
        if name not in self.free:
            self.free[name] = node
            if via is not None:
                self.via[name] = via
        if not deferred:
            self.read_directly.add(name)
        if (name not in self.flow.may and not self.star_seen and name not in self.definite
                and not self.soft_read):
            self.definite.add(name)
            self.definite_log.append(name)

    def _record_callback(self, name: str, node: ast.AST, via: tuple[str, ast.AST | None]
                         ) -> None:
        if name not in self.callback:
            self.callback[name] = node
            self.via.setdefault(name, via)

    # ---- deferred reads: code that runs where it is called -----------------------------

    def _code_info(self, name: str) -> FunctionInfo | None:
        info = self.functions.get(name)
        if info is None and name not in self.binds:
            info = self.known.get(name)
        return info

    def _closure(self, name: str) -> dict[str, tuple[str, bool]]:
        """The globals calling ``name`` may read, transitively: each with the function
        whose body reads it and whether a call surely reads it (else only code handed
        out by the call, or a method, does)."""
        cached = self.closures.get(name)
        if cached is not None:
            return cached
        reads: dict[str, tuple[str, bool]] = {}
        seen: dict[str, bool] = {}
        pending = [(name, True)]
        while pending:
            current, sure = pending.pop()
            if current in seen and (seen[current] or not sure):
                continue
            seen[current] = sure
            info = self._code_info(current)
            if info is None:
                continue
            sure = sure and not info.is_class
            for read in info.globals_read:
                read_sure = sure and read not in info.later_reads
                known = reads.get(read)
                if known is None or (read_sure and not known[1]):
                    reads[read] = (current, read_sure)
                if read != current and self._code_info(read) is not None:
                    pending.append((read, read_sure))
        self.closures[name] = reads
        self.closure_names.update(seen)
        self.closure_names.update(reads)
        return reads

    def _new_code(self, name: str) -> None:
        """``name`` now names other code (or none): cached closures through it are stale."""
        if name in self.closure_names:
            self.closures.clear()
            self.closure_names.clear()

    def _use_function(self, name: str, node: ast.AST) -> None:
        """A function or class of this source or an earlier one is referenced.

        Called by name, its body runs now: what it surely reads is read here. Handed on,
        stored or instantiated, its code may run from here on: a callback read."""
        reads = self._closure(name)
        if not reads:
            return self._use_writer(name)
        called = node is self.calling or node in self.run_now
        must = self.flow.must
        if self.collecting and not self.operand:
            # The value holds the code: all of it, or what a call hands out (a closure,
            # an instance's methods); not the result of arithmetic on it.
            if called:
                self.held.extend(r for r, (_, sure) in reads.items() if not sure)
            else:
                self.held.extend(reads)
        for read, (owner, sure) in reads.items():
            if read in must:
                continue
            site = (owner, self.read_nodes.get(owner, {}).get(read))
            if called and sure:
                self._record_free(read, node, deferred=True, via=site)
            else:
                self._record_callback(read, node, site)
        self._use_writer(name)

    def _use_writer(self, name: str) -> None:
        if name in self.functions:
            # A function of this source writing globals: they may be written from here.
            writes = self.writes_of.get(name)
            if writes is None:
                writes = self.writes_of[name] = function_writes([name], self.functions)
            self.binds |= writes
            self.flow.may |= writes
            for written in writes:
                self._mutate_module(written)

    def _use_holder(self, name: str, node: ast.AST) -> None:
        """A value that may hold notebook code is read: that code may run from here on."""
        reads = set(self.code_held.get(name, ()))
        if name not in self.flow.must:
            reads.update(self.held_in.get(name, ()))
        if self.collecting and not self.operand:  # ``obj.total + 1``: a number, not code
            self.held.extend(reads)
        must = self.flow.must
        for read in reads:
            if read not in must:
                self._record_callback(read, node, (name, None))

    def _callback_reads(self, globals_: _Globals, node: ast.AST) -> None:
        """The reads of a lambda that may run from here on (handed on, stored)."""
        if self.collecting:
            self.held.extend(globals_.reads)
        must = self.flow.must
        for name, read_node in globals_.reads.items():
            if name not in must:
                self._record_callback(name, read_node, ("a lambda", read_node))
            if name in self.functions or (name in self.known and name not in self.binds):
                self._use_function(name, node)
            elif name in self.code_held or name in self.held_in:
                self._use_holder(name, node)
        for name in globals_.mutated:
            self._mutate_module(name)
        for name in globals_.written:
            self.binds.add(name)
            self.flow.may.add(name)
            self._mutate_module(name)

    def _hold(self, target: ast.expr, reads: set[str], replace: bool) -> None:
        """An assignment target now (``replace``) or also holds code reading ``reads``."""
        if isinstance(target, ast.Name):
            if replace and not reads:
                self.code_held.pop(target.id, None)
            elif replace:
                self.code_held[target.id] = set(reads)
            elif reads:
                self.code_held.setdefault(target.id, set()).update(reads)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._hold(element, reads, replace)
        elif isinstance(target, ast.Starred):
            self._hold(target.value, reads, replace)
        elif reads:
            root = _root_name(target)
            if root is not None:
                self.code_held.setdefault(root, set()).update(reads)

    def _mutate_module(self, name: str) -> None:
        if name in self.imported:
            return
        self.mutates.add(name)
        self.mutates |= self.aliases.get(name, set())

    def _mutate(self, name: str, node: ast.AST) -> None:
        self._load(name, node, mutate=True)

    def _bind(self, name: str) -> None:
        scope = self.scope
        if scope is None:
            self._bind_module(name)
        elif name in scope.declared_global:
            if scope.immediate:
                self._bind_module(name)
            else:
                scope.global_writes.add(name)
        elif scope.kind == _CLASS:
            assert scope.flow is not None
            scope.flow.must.add(name)
            scope.flow.may.add(name)
        elif name not in scope.nonlocals:
            scope.locals.add(name)

    def _bind_module(self, name: str) -> None:
        if name in self.known and name not in self.binds:
            self._new_code(name)  # an earlier cell's function no longer applies
        self.binds.add(name)
        self.flow.must.add(name)
        self.flow.may.add(name)
        self.imported.discard(name)

    def _bind_walrus(self, name: str) -> None:
        # An assignment expression in a comprehension binds in the enclosing scope.
        scope = self.scope
        saved = scope
        while scope is not None and scope.kind == _COMPREHENSION:
            scope = scope.parent
        self.scope = scope
        self._bind(name)
        self.scope = saved

    def _unbind(self, name: str, explicit: bool) -> None:
        scope = self.scope
        flow = self._flow()
        if scope is None or (name in scope.declared_global and scope.immediate):
            self.binds.add(name)
            self.imported.discard(name)
            self.deleted.add(name)
            if explicit:
                self.clause_deleted.discard(name)
            else:
                self.clause_deleted.add(name)
            flow = self.flow
        elif name in scope.declared_global:
            scope.global_writes.add(name)
        elif scope.kind != _CLASS and name not in scope.nonlocals:
            scope.locals.add(name)
        if flow is not None:
            flow.must.discard(name)
            flow.may.discard(name)
            flow.dels.append(name)

    def _flow(self) -> _Flow | None:
        """The flow state statements here update: the module's, a class body's, or none
        inside functions (where a name is local if bound anywhere)."""
        scope = self.scope
        if scope is None:
            return self.flow
        return scope.flow

    def _walrus_flow(self) -> _Flow | None:
        scope = self.scope
        while scope is not None and scope.kind == _COMPREHENSION:
            scope = scope.parent
        return self.flow if scope is None else scope.flow

    # ---- scopes ----------------------------------------------------------------------

    def _push(self, kind: int, names: Iterable[str] = ()) -> _Scope:
        scope = _Scope(kind, self.scope)
        scope.locals.update(names)
        self.scope = scope
        return scope

    def _pop(self) -> _Globals | None:
        """Leave a scope. For a deferred scope whose enclosing code runs at module time,
        return the module-level names it reads and writes."""
        scope = self.scope
        assert scope is not None
        self.scope = scope.parent
        if scope.immediate:
            return None
        loads = {n: node for n, node in scope.loads.items() if n not in scope.locals}
        scope.closed_mutated = _through_aliases(scope.mutated, scope)
        mutated = scope.closed_mutated - scope.locals
        target = scope.visible_parent()
        if target is not None and not target.immediate:
            for name, sources in scope.aliases.items():
                if name not in scope.locals:  # a walrus target of the enclosing scope
                    shared = _through_aliases(sources, scope) - scope.locals
                    target.aliases.setdefault(name, set()).update(shared)
            nested = scope.kind in (_FUNCTION, _LAMBDA)  # its body runs later
            for name, node in loads.items():
                if name not in target.loads:
                    target.loads[name] = node
                    if nested or name in scope.later:
                        target.later.add(name)
                elif not nested and name not in scope.later:
                    target.later.discard(name)
            for name, node in scope.global_loads.items():
                target.global_loads.setdefault(name, node)
            target.mutated |= mutated
            target.global_mutated |= scope.global_mutated
            target.global_writes |= scope.global_writes
            return None
        result = _Globals(dict(scope.global_loads), set(scope.global_mutated),
                          set(scope.global_writes))
        for name, node in loads.items():
            if not self._resolved_by_enclosing(target, name):
                if name not in result.reads and name in scope.later:
                    result.later.add(name)
                result.reads.setdefault(name, node)
                if name in mutated:
                    result.mutated.add(name)
        return result

    def _share(self, name: str, shared: set[str]) -> None:
        """``name`` may now share objects with ``shared``."""
        if not shared:
            return
        scope = self.scope
        if scope is None:
            self._alias({name} | shared)
        elif scope.kind != _CLASS:
            scope.aliases.setdefault(name, set()).update(shared)

    @staticmethod
    def _resolved_by_enclosing(scope: _Scope | None, name: str) -> bool:
        while scope is not None:
            if scope.kind != _CLASS and name in scope.locals:
                return True
            scope = scope.parent
        return False

    def _charge_owner(self, globals_: _Globals) -> None:
        """Reads of a body that runs when the owner is called (or after: ``later``)."""
        owner = self.owner
        if owner is None:  # not expected: defs at module level always have an owner
            self._read_now(globals_)
            return
        for name, node in globals_.reads.items():
            owner.reads.setdefault(name, node)
            if name not in globals_.later:
                owner.direct.add(name)
        owner.writes |= globals_.mutated | globals_.written

    def _read_now(self, globals_: _Globals) -> None:
        for name, node in globals_.reads.items():
            self._module_read(name, node, name in globals_.mutated, deferred=True)
        for name in globals_.written:
            self.binds.add(name)
            self.flow.may.add(name)
            self._mutate_module(name)

    # ---- statements --------------------------------------------------------------------

    def _statement_handlers(self) -> dict[type[ast.AST], Any]:
        handlers: dict[type[ast.AST], Any] = {
            ast.Expr: self._expr_statement,
            ast.Assign: self._assign,
            ast.AugAssign: self._aug_assign,
            ast.AnnAssign: self._ann_assign,
            ast.For: self._for,
            ast.AsyncFor: self._for,
            ast.While: self._while,
            ast.If: self._if,
            ast.With: self._with,
            ast.AsyncWith: self._with,
            ast.Match: self._match,
            ast.Raise: self._raise,
            ast.Try: self._try,
            ast.Assert: self._generic,
            ast.Import: self._import,
            ast.ImportFrom: self._import_from,
            ast.Global: self._global,
            ast.Nonlocal: self._nonlocal,
            ast.Return: self._return,
            ast.Delete: self._delete,
            ast.Pass: self._pass,
            ast.Break: self._break,
            ast.Continue: self._continue,
            ast.FunctionDef: self._function_def,
            ast.AsyncFunctionDef: self._function_def,
            ast.ClassDef: self._class_def,
        }
        for name, handler in (("TryStar", self._try), ("TypeAlias", self._type_alias)):
            node_type = getattr(ast, name, None)
            if node_type is not None:
                handlers[node_type] = handler
        return handlers

    def _block(self, body: list[ast.stmt]) -> None:
        handlers = self.stmt_handlers
        generic = self._generic
        for statement in body:
            flow = self._flow()
            if flow is not None and flow.dead:
                return  # code after raise/break/continue never runs
            handlers.get(type(statement), generic)(statement)

    def _generic(self, node: ast.AST) -> None:
        """Unknown or simple nodes: visit the children in field order."""
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child)
            elif isinstance(child, ast.stmt):
                self._block([child])
            elif isinstance(child, ast.keyword):
                self._expr(child.value)
            elif not isinstance(child, (ast.expr_context, ast.operator, ast.boolop,
                                        ast.unaryop, ast.cmpop)):
                self._generic(child)

    def _pass(self, node: ast.stmt) -> None:
        pass

    def _expr_statement(self, node: ast.Expr) -> None:
        self._expr(node.value)

    def _assign(self, node: ast.Assign) -> None:
        value = node.value
        module = self.scope is None
        named_lambda = (module and isinstance(value, ast.Lambda) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name))
        if named_lambda:
            assert isinstance(value, ast.Lambda)
            self.stored_lambda = value
        saved_carry, self.carry = self.carry, [] if module else None
        mark = self._gather() if module else 0
        self._expr(value)
        held = self._gathered(mark) if module else set()
        self._carry_into(node.targets, value, saved_carry)
        shared = _shared_names(value)
        holds = module and not named_lambda and (held or self.code_held)
        for target in node.targets:
            self._target(target, shared)
            if holds:
                self._hold(target, held, replace=True)
        if named_lambda:
            assert isinstance(value, ast.Lambda)
            self.stored_lambda = None
            globals_ = self.lambdas.get(value)
            target = node.targets[0]
            assert isinstance(target, ast.Name)
            self.code_held.pop(target.id, None)
            if globals_ is not None:
                self._register_lambda(target.id, value, globals_, node.lineno)

    def _register_lambda(self, name: str, value: ast.Lambda, globals_: _Globals,
                         line: int) -> None:
        self._new_code(name)
        self.read_nodes[name] = globals_.reads
        self.writes_of.clear()
        self.functions[name] = FunctionInfo(
            name, frozenset(globals_.reads), frozenset(globals_.mutated | globals_.written),
            line, _parameter_list(value.args), self.lambda_parameters.get(value),
            later_reads=frozenset(globals_.later), read_at=_read_lines(globals_.reads))

    def _carry_into(self, targets: list[ast.expr], value: ast.expr,
                    saved: list[tuple[str, bool]] | None) -> None:
        """``fit = smf.ols("y ~ f(x)", df).fit()``: restoring ``fit`` evaluates the formula
        again, so a step receiving ``fit`` needs what the formula read. So does a copy of it
        (``m = fit``) or a model fitted from it (``fit = model.fit()``)."""
        carry, self.carry = self.carry, saved
        if not carry and not self.carries:
            return  # (most notebooks fit no formula model)
        if not carry:
            source = value.func.value if isinstance(value, ast.Call) and isinstance(
                value.func, ast.Attribute) and value.func.attr.startswith("fit") else value
            if isinstance(source, ast.Name) and source.id in self.carries:
                carry = list(self.carries[source.id])
        for target in targets:
            if isinstance(target, ast.Name):
                if carry:
                    self.carries[target.id] = tuple(dict.fromkeys(carry))
                else:
                    self.carries.pop(target.id, None)

    def _aug_assign(self, node: ast.AugAssign) -> None:
        target = node.target
        module = self.scope is None
        mark = self._gather() if module else 0
        if isinstance(target, ast.Name):
            self._mutate(target.id, target)
            self._expr(node.value)
            self._bind(target.id)
        else:
            self._store_into(target)
            self._expr(node.value)
        if module:
            self._hold(target, self._gathered(mark), replace=False)

    def _ann_assign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            module = self.scope is None
            mark = self._gather() if module else 0
            self._expr(node.value)
            if module:
                self._hold(node.target, self._gathered(mark), replace=True)
        target = node.target
        if isinstance(target, ast.Name):
            if node.value is not None:
                self._bind(target.id)
        elif node.value is not None:
            self._store_into(target)
        else:  # ``x.a: int`` evaluates x but stores nothing
            self._expr(target.value if isinstance(target, (ast.Attribute, ast.Subscript))
                       else target)
        if self._annotations_evaluated():
            self._expr(node.annotation)

    def _annotations_evaluated(self) -> bool:
        # Annotations of local variables in a function body are never evaluated.
        scope = self.scope
        in_function = scope is not None and scope.kind in (_FUNCTION, _LAMBDA)
        return _EAGER_ANNOTATIONS and not self.future_annotations and not in_function

    def _target(self, node: ast.expr, shared: set[str] | None = None) -> None:
        """Bind an assignment target; ``shared`` are variables the value may alias."""
        if isinstance(node, ast.Name):
            self._bind(node.id)
            if shared:
                self._share(node.id, shared)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                self._target(element, shared)
        elif isinstance(node, ast.Starred):
            self._target(node.value, shared)
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            root = self._store_into(node)
            if root is not None and shared:
                self._share(root, shared)
        else:
            self._expr(node)

    def _store_into(self, node: ast.Attribute | ast.Subscript) -> str | None:
        """``x.a = ...`` / ``x[k] = ...``: reads the chain and mutates its root."""
        self._expr(node.value)
        if isinstance(node, ast.Subscript):
            self._expr(node.slice)
        root = _root_name(node)
        if root is not None:
            self._mutate(root, node)
        return root

    def _alias(self, names: set[str]) -> None:
        # Later in-place changes through any of these names change the others' objects
        # too (``X = df; X["c"] = 1`` changes df). Groups only grow: over-approximate.
        group: set[str] = set()
        for name in names:
            group |= self.aliases.get(name, {name})
        if len(group) > 1:
            for name in group:
                self.aliases[name] = group

    def _for(self, node: ast.For | ast.AsyncFor) -> None:
        self._expr(node.iter)
        shared = _shared_names(node.iter)

        def bind_target() -> None:
            self._target(node.target, shared)

        self._loop(bind_target, node.body, node.orelse, infinite=False)

    def _while(self, node: ast.While) -> None:
        self._expr(node.test)
        test = node.test
        infinite = isinstance(test, ast.Constant) and bool(test.value)

        def test_again() -> None:
            self._expr(test)

        self._loop(None, node.body, node.orelse, infinite, test_again)

    def _loop(self, before_body: Callable[[], None] | None, body: list[ast.stmt],
              orelse: list[ast.stmt], infinite: bool,
              before_repeat: Callable[[], None] | None = None) -> None:
        flow = self._flow()
        if flow is None:
            if before_body is not None:
                before_body()
            self._block(body)
            self._block(orelse)
            return
        entry = flow.save()
        mark = len(self.definite_log)
        start = entry
        while True:
            loop = _Loop()
            self.loops.append(loop)
            if before_body is not None:
                before_body()
            self._block(body)
            end = flow.save()
            self.loops.pop()
            # A later iteration starts without what this one deleted (``del x`` in the
            # body): walk the body again from that weaker state until nothing changes.
            again = [s.must for s in (end, *loop.continues) if not s.dead]
            must_again = start.must.intersection(*again) if again else start.must
            if must_again == start.must:
                break
            start = _State(must_again, start.may | end.may, False)
            flow.restore(start)
            if before_repeat is not None:
                before_repeat()
        # A read early in the body may follow a binding made late in the previous
        # iteration: such reads are only maybe-free.
        may_again = set(end.may)
        for state in loop.continues:
            may_again |= state.may
        for name in self.definite_log[mark:]:
            if name in may_again:
                self.definite.discard(name)
        if infinite:  # ``while True``: the only way out is a break
            flow.restore(_State(set(), may_again, True))
        else:
            flow.restore(_join([entry, end, *loop.continues]))
        if not flow.dead:
            self._block(orelse)
        flow.restore(_join([flow.save(), *loop.breaks]))

    def _if(self, node: ast.If) -> None:
        flow = self._flow()
        ends: list[_State] = []
        current: ast.If = node
        while True:  # an elif chain, iteratively: long chains must not hit recursion limits
            self._expr(current.test)
            before = flow.save() if flow is not None else None
            self._block(current.body)
            if flow is not None and before is not None:
                ends.append(flow.save())
                flow.restore(before)
            orelse = current.orelse
            if len(orelse) == 1 and isinstance(orelse[0], ast.If):
                current = orelse[0]
                continue
            self._block(orelse)
            if flow is not None:
                ends.append(flow.save())
                flow.restore(_join(ends))
            return

    def _with(self, node: ast.With | ast.AsyncWith) -> None:
        suppressing = False
        for item in node.items:
            self._expr(item.context_expr)
            if item.optional_vars is not None:
                # ``with p as q``: q is often p itself (files, locks, sessions).
                self._target(item.optional_vars, _shared_names(item.context_expr))
            suppressing = suppressing or _is_suppressing(item.context_expr)
        flow = self._flow()
        if flow is None or not suppressing:
            self._block(node.body)
            return
        entry = flow.save()
        first_del = len(flow.dels)
        self._block(node.body)
        flow.restore(_join([self._interrupted(entry, first_del), flow.save()]))

    def _interrupted(self, entry: _State, first_del: int) -> _State:
        """The state when a region that started at ``entry`` stops at an unknown point."""
        flow = self._flow()
        assert flow is not None
        deleted = set(flow.dels[first_del:])
        return _State(entry.must - deleted, entry.may | flow.may | deleted, False)

    def _try(self, node: ast.Try) -> None:
        flow = self._flow()
        if flow is None:
            self._generic_try(node)
            return
        entry = flow.save()
        first_del = len(flow.dels)
        self._block(node.body)
        body_end = flow.save()
        raised = self._interrupted(entry, first_del)
        ends = []
        for handler in node.handlers:
            flow.restore(raised)
            self._handler(handler)
            ends.append(flow.save())
        flow.restore(body_end)
        if not flow.dead:
            self._block(node.orelse)
        ends.append(flow.save())
        normal = _join(ends)
        if not node.finalbody:
            flow.restore(normal)
            return
        # finally runs on every path, exceptional ones included: read it in the weakest
        # state, but the code after the try continues only from the normal exits.
        weakest = _join([normal, raised])
        weakest.must -= set(flow.dels[first_del:])
        weakest.dead = False
        flow.restore(weakest)
        finally_del = len(flow.dels)
        self._block(node.finalbody)
        added = flow.must - weakest.must
        deleted = set(flow.dels[finally_del:])
        flow.restore(_State((normal.must | added) - deleted, normal.may | flow.may,
                            normal.dead or flow.dead))

    def _generic_try(self, node: ast.Try) -> None:
        self._block(node.body)
        for handler in node.handlers:
            self._handler(handler)
        self._block(node.orelse)
        self._block(node.finalbody)

    def _handler(self, handler: ast.ExceptHandler) -> None:
        if handler.type is not None:
            self._expr(handler.type)
        if handler.name:
            self._bind(handler.name)
        self._block(handler.body)
        if handler.name:
            # ``except E as e`` deletes e when the handler ends.
            self._unbind(handler.name, explicit=False)

    def _match(self, node: ast.Match) -> None:
        self._expr(node.subject)
        flow = self._flow()
        if flow is None:
            for case in node.cases:
                self._pattern(case.pattern)
                if case.guard is not None:
                    self._expr(case.guard)
                self._block(case.body)
            return
        entry = flow.save()
        ends: list[_State] = []
        for case in node.cases:
            flow.restore(entry)
            self._pattern(case.pattern)
            if case.guard is not None:
                self._expr(case.guard)
            # A failed pattern or guard may leave some names bound: maybe-bound afterwards.
            entry.may |= flow.may
            self._block(case.body)
            ends.append(flow.save())
            if case.guard is None and _irrefutable(case.pattern):
                break
        else:
            ends.append(entry)
        flow.restore(_join(ends))

    def _pattern(self, pattern: ast.pattern) -> None:
        if isinstance(pattern, ast.MatchValue):
            self._expr(pattern.value)
        elif isinstance(pattern, ast.MatchSequence):
            for sub in pattern.patterns:
                self._pattern(sub)
        elif isinstance(pattern, ast.MatchMapping):
            for key in pattern.keys:
                self._expr(key)
            for sub in pattern.patterns:
                self._pattern(sub)
            if pattern.rest:
                self._bind(pattern.rest)
        elif isinstance(pattern, ast.MatchClass):
            self._expr(pattern.cls)
            for sub in (*pattern.patterns, *pattern.kwd_patterns):
                self._pattern(sub)
        elif isinstance(pattern, ast.MatchStar):
            if pattern.name:
                self._bind(pattern.name)
        elif isinstance(pattern, ast.MatchAs):
            if pattern.pattern is not None:
                self._pattern(pattern.pattern)
            if pattern.name:
                self._bind(pattern.name)
        elif isinstance(pattern, ast.MatchOr):
            for sub in pattern.patterns:
                self._pattern(sub)

    def _raise(self, node: ast.Raise) -> None:
        self._generic(node)
        self._end_path()

    def _return(self, node: ast.Return) -> None:
        if node.value is not None:
            self._expr(node.value)
        self._end_path()

    def _break(self, node: ast.Break) -> None:
        flow = self._flow()
        if flow is not None and self.loops:
            self.loops[-1].breaks.append(flow.save())
        self._end_path()

    def _continue(self, node: ast.Continue) -> None:
        flow = self._flow()
        if flow is not None and self.loops:
            self.loops[-1].continues.append(flow.save())
        self._end_path()

    def _end_path(self) -> None:
        flow = self._flow()
        if flow is not None:
            flow.dead = True

    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            # ``import a.b.c`` binds a; ``import a.b as c`` binds c.
            name = alias.asname or alias.name.partition(".")[0]
            self._bind(name)
            if self.scope is None:
                self.imported.add(name)

    def _import_from(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                module = "." * node.level + (node.module or "")
                self.star_imports.append(self._use(module, node))
                if self.scope is None:
                    # Any later unbound read might be served by the star import.
                    self.star_seen = True
            else:
                name = alias.asname or alias.name
                self._bind(name)
                if self.scope is None:
                    self.imported.add(name)

    def _global(self, node: ast.Global) -> None:
        if self.scope is not None:
            self.scope.declared_global.update(node.names)

    def _nonlocal(self, node: ast.Nonlocal) -> None:
        if self.scope is not None:
            self.scope.nonlocals.update(node.names)

    def _delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._delete_target(target)

    def _delete_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._load(target.id, target)  # deleting an unbound name is a NameError
            self._unbind(target.id, explicit=True)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._delete_target(element)
        elif isinstance(target, (ast.Attribute, ast.Subscript)):
            self._store_into(target)
        else:
            self._expr(target)

    def _function_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        wrapped = self._walk_collecting(node.decorator_list, applied=True)
        self._defaults(node.args)
        top_level = self.scope is None
        type_params = _type_parameters(node)
        if type_params:
            self._type_param_scope(type_params)
        if self._annotations_evaluated():
            self._annotations(node.args, node.returns)
        saved_owner = self.owner
        if top_level:
            self.owner = _Owner()
        self._charge_wrapper(wrapped, node)
        if self.owner is not None:
            self.owner.writes |= self._decorator_writes(node.decorator_list)
        parameters = _parameter_list(node.args)
        scope = self._push(_FUNCTION, _parameters(node.args))
        self._block(node.body)
        globals_ = self._pop()
        if globals_ is not None:
            self._charge_owner(globals_)
        if type_params:
            self._pop()
        if top_level:
            mutated = None
            if all(_is_transparent(d) for d in node.decorator_list):
                mutated = frozenset(p for p in parameters if p.lstrip("*") in scope.closed_mutated)
            self._register(node, saved_owner, parameters, mutated)
        self._bind(node.name)

    def _register(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
                  saved_owner: _Owner | None, parameters: tuple[str, ...] = (),
                  mutated: frozenset[str] | None = None) -> None:
        owner = self.owner
        assert owner is not None
        self._new_code(node.name)
        self.read_nodes[node.name] = owner.reads
        is_class = isinstance(node, ast.ClassDef)
        self.writes_of.clear()
        self.functions[node.name] = FunctionInfo(
            node.name, frozenset(owner.reads), frozenset(owner.writes), node.lineno,
            parameters, mutated, read_at=_read_lines(owner.reads), is_class=is_class,
            later_reads=frozenset(owner.reads) if is_class else owner.later())
        self.owner = saved_owner

    def _walk_collecting(self, nodes: list[ast.expr], applied: bool = False) -> set[str]:
        """Walk expressions (decorators, bases); the globals the code they name reads.

        ``applied``: decorators, called on the definition (their wrapper is kept)."""
        if not nodes:
            return set()
        mark = self._gather()
        for expr in nodes:
            if applied and isinstance(expr, ast.Name):
                self.calling = expr
            self._expr(expr)
            self.calling = None
        return self._gathered(mark)

    def _gather(self) -> int:
        """Start gathering the reads of the code a value holds; the mark to take them from."""
        self.collecting += 1
        return len(self.held)

    def _gathered(self, mark: int) -> set[str]:
        self.collecting -= 1
        if len(self.held) == mark:  # (mostly: no code in the value)
            return set()
        found = set(self.held[mark:])
        del self.held[mark:]
        return found

    def _decorator_writes(self, decorators: list[ast.expr]) -> set[str]:
        """The globals a notebook decorator's code writes (its wrapper runs at each call)."""
        writes: set[str] = set()
        for decorator in decorators:
            callee = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(callee, ast.Name) and self._code_info(callee.id) is not None:
                for name in (callee.id, *self._closure(callee.id)):
                    info = self._code_info(name)
                    if info is not None:
                        writes |= info.globals_written
        return writes

    def _charge_wrapper(self, reads: set[str], node: ast.AST) -> None:
        """A decorator's wrapper or a base class's methods run when the owner's code does."""
        owner = self.owner
        if owner is not None:
            for name in reads:
                owner.reads.setdefault(name, node)
                owner.direct.add(name)

    def _defaults(self, args: ast.arguments) -> None:
        for default in args.defaults:
            self._expr(default)
        for kw_default in args.kw_defaults:
            if kw_default is not None:
                self._expr(kw_default)

    def _annotations(self, args: ast.arguments, returns: ast.expr | None) -> None:
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        for arg in every:
            if arg is not None and arg.annotation is not None:
                self._expr(arg.annotation)
        if returns is not None:
            self._expr(returns)

    def _type_param_scope(self, params: list[ast.AST]) -> None:
        names = {str(getattr(p, "name", "")) for p in params}
        self._push(_TYPE_PARAMS, names)
        for param in params:
            for field_name in ("bound", "default_value"):
                value = getattr(param, field_name, None)
                if isinstance(value, ast.expr):
                    self._expr(value)

    def _class_def(self, node: ast.ClassDef) -> None:
        wrapped = self._walk_collecting(node.decorator_list, applied=True)
        top_level = self.scope is None
        type_params = _type_parameters(node)
        if type_params:
            self._type_param_scope(type_params)
        wrapped |= self._walk_collecting(node.bases)
        for keyword in node.keywords:
            self._expr(keyword.value)
        saved_owner = self.owner
        if top_level:
            self.owner = _Owner()
        self._charge_wrapper(wrapped, node)
        saved_loops = self.loops
        self.loops = []  # break/continue never cross a class body
        self._push(_CLASS)
        self._block(node.body)
        self._pop()
        self.loops = saved_loops
        if type_params:
            self._pop()
        if top_level:
            self._register(node, saved_owner)
        self._bind(node.name)

    def _type_alias(self, node: ast.AST) -> None:
        # ``type X[T] = value``: the value is evaluated lazily, like a lambda body.
        name = getattr(node, "name", None)
        value = getattr(node, "value", None)
        type_params = _type_parameters(node)
        if type_params:
            self._type_param_scope(type_params)
        if isinstance(value, ast.expr):
            self._push(_LAMBDA)
            self._expr(value)
            globals_ = self._pop()
            if globals_ is not None:
                self._read_now(globals_)
        if type_params:
            self._pop()
        if isinstance(name, ast.Name):
            self._bind(name.id)

    # ---- expressions -------------------------------------------------------------------

    def _expression_handlers(self) -> dict[type[ast.AST], Any]:
        return {
            ast.Name: self._name,
            ast.Constant: self._constant,
            ast.Attribute: self._chain,
            ast.Subscript: self._chain,
            ast.Call: self._chain,
            ast.BinOp: self._binop,
            ast.BoolOp: self._boolop,
            ast.IfExp: self._ifexp,
            ast.Compare: self._compare,
            ast.UnaryOp: self._unaryop,
            ast.Tuple: self._elements,
            ast.List: self._elements,
            ast.Set: self._elements,
            ast.Starred: self._starred,
            ast.Lambda: self._lambda,
            ast.NamedExpr: self._named_expr,
            ast.ListComp: self._comprehension,
            ast.SetComp: self._comprehension,
            ast.GeneratorExp: self._comprehension,
            ast.DictComp: self._comprehension,
        }

    def _expr(self, node: ast.expr) -> None:
        handler = self.expr_handlers.get(type(node))
        if handler is None:
            self._generic(node)
        else:
            handler(node)

    def _constant(self, node: ast.Constant) -> None:
        pass

    def _name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            if self.scope is None:  # the most frequent case, without the dispatch
                self._module_read(node.id, node, False)
            else:
                self._load(node.id, node)
        elif isinstance(node.ctx, ast.Store):
            self._bind(node.id)
        else:
            self._delete_target(node)

    def _chain(self, node: ast.Attribute | ast.Subscript | ast.Call) -> None:
        """``df.a[k].f(x).g()``: walked innermost first, with a loop rather than recursion
        so that long method chains cannot hit the recursion limit."""
        links: list[ast.Subscript | ast.Call] = []
        inner: ast.expr = node
        while True:
            if isinstance(inner, ast.Attribute):
                inner = inner.value
            elif isinstance(inner, ast.Subscript):
                links.append(inner)
                inner = inner.value
            elif isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute):
                links.append(inner)
                inner = inner.func.value
            else:
                break
        if isinstance(inner, ast.Call):
            func = inner.func
            if isinstance(func, ast.Name):
                self.calling = func  # a function called by name runs its body here
            self._expr(func)
            self.calling = None
            self._call(inner)
        else:
            self._expr(inner)
        for link in reversed(links):
            if isinstance(link, ast.Subscript):
                self._expr(link.slice)
            else:
                self._call(link)

    def _binop(self, node: ast.BinOp) -> None:
        rights: list[ast.expr] = []
        left: ast.expr = node
        while isinstance(left, ast.BinOp):  # ``a + b + c + ...`` nests to the left
            rights.append(left.right)
            left = left.left
        self.operand += 1
        self._expr(left)
        for right in reversed(rights):
            self._expr(right)
        self.operand -= 1

    def _compare(self, node: ast.Compare) -> None:
        self.operand += 1
        self._expr(node.left)
        for comparator in node.comparators:
            self._expr(comparator)
        self.operand -= 1

    def _unaryop(self, node: ast.UnaryOp) -> None:
        operand = node.operand
        while isinstance(operand, ast.UnaryOp):  # ``not not x``, ``--x``
            operand = operand.operand
        self._expr(operand)

    def _elements(self, node: ast.Tuple | ast.List | ast.Set) -> None:
        for element in node.elts:
            self._expr(element)

    def _starred(self, node: ast.Starred) -> None:
        self._expr(node.value)

    def _boolop(self, node: ast.BoolOp) -> None:
        self._expr(node.values[0])
        flow = self._walrus_flow() if self.walrus else None
        saved = set(flow.must) if flow is not None else None
        for value in node.values[1:]:  # may not be evaluated: walrus binds are maybe
            self._expr(value)
        if flow is not None and saved is not None:
            flow.must = saved

    def _ifexp(self, node: ast.IfExp) -> None:
        self._expr(node.test)
        flow = self._walrus_flow() if self.walrus else None
        if flow is None:
            self._expr(node.body)
            self._expr(node.orelse)
            return
        saved = set(flow.must)
        self._expr(node.body)
        body_must = flow.must
        flow.must = set(saved)
        self._expr(node.orelse)
        flow.must &= body_must

    def _named_expr(self, node: ast.NamedExpr) -> None:
        self._expr(node.value)
        target = node.target
        if isinstance(target, ast.Name):
            self._bind_walrus(target.id)
            self._share(target.id, _shared_names(node.value))

    def _call(self, node: ast.Call) -> None:
        """The arguments and mutation rules of a call whose callee was walked already."""
        func = node.func
        keeper = self._hand_over(node, func) if node.args or node.keywords else None
        mark = len(self.held)
        outer = self.collecting
        if keeper is not None:
            self.collecting += 1
        for arg in node.args:
            self._expr(arg)
        for keyword in node.keywords:
            self._expr(keyword.value)
        if len(self.held) > mark:
            if keeper is not None and keeper not in _MODULE_ALIASES and (
                    keeper not in self.imported):
                self.code_held.setdefault(keeper, set()).update(self.held[mark:])
            if not (outer and self._result_keeps(func)):
                del self.held[mark:]  # ``sorted(xs, key=f)``: the result does not hold f
        self.collecting = outer
        info = None
        if isinstance(func, ast.Attribute):
            arguments_safe = self._method_call(node, func)
        elif isinstance(func, ast.Name):
            arguments_safe = func.id in _PURE_FUNCTIONS
            info = self._known_function(func.id) if not arguments_safe else None
            if not arguments_safe and info is None and self._may_keep_state(func.id):
                # A callable may keep state: a closure's counter, a torch module's
                # running statistics, parameters changed through an optimizer.
                self._mutate(func.id, func)
        else:
            arguments_safe = False
        callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if callee in _STRING_CALLEES:
            self._string_reads(node)
        if arguments_safe:
            return
        # The callee may change any object handed to it (``shuffle(x)``, ``f(df)``),
        # unless it is a notebook function known to leave that parameter alone.
        for value in _changed_arguments(node, info):
            for name in _held_names(value):
                if name.id not in _BUILTIN_TYPES or name.id in self.binds:
                    self._mutate(name.id, name)

    def _hand_over(self, node: ast.Call, func: ast.expr) -> str | None:
        """Where the code handed to a call goes: run now (``sorted(key=f)``), into the
        result (``partial(f)``), into the receiver (``handlers.append(f)``, returned)."""
        keeper = None
        if type(func) is ast.Attribute:
            method = func.attr
            runs = method in _PURE_METHODS
            if self.scope is None and not (
                    runs or method in _KEEPING_CALLS or method[:1].isupper()):
                keeper = _root_name(func.value)
        else:
            runs = type(func) is ast.Name and func.id in _RUNS_ARGUMENTS
        if runs:
            for value in (*node.args, *(k.value for k in node.keywords)):
                if isinstance(value, (ast.Lambda, ast.Name)):
                    self.run_now.add(value)
        return keeper

    def _result_keeps(self, func: ast.expr) -> bool:
        """Whether a call's result may hold the code handed to it: a wrapper (partial,
        map), a class (CapWords: a constructor keeps its arguments), a notebook function
        (a decorator, a factory); not ``sorted(xs, key=f)`` or ``df.apply(f)``."""
        if isinstance(func, ast.Name):
            name = func.id
            return (name in _KEEPING_CALLS or name[:1].isupper()
                    or self._code_info(name) is not None)
        if isinstance(func, ast.Attribute):
            return func.attr in _KEEPING_CALLS or func.attr[:1].isupper()
        return True

    def _string_reads(self, node: ast.Call) -> None:
        """Names a formula or pandas expression passed to the call reads (string_reads).

        A name that may be a column of the data (``certain`` false) is read when some step
        binds it and is no error otherwise: a maybe-read, only where it runs now."""
        from . import string_reads  # (loaded only for notebooks with such calls)

        found = string_reads.call_reads(node)
        if found is None:
            return
        reads, notes = found
        self.string_notes += notes
        if self.carry is not None:
            self.carry += [(read.name, read.certain) for read in reads]
        for read in reads:
            if not read.certain and not (self.scope is None or self.scope.immediate):
                continue
            use = ast.Name(read.name, ast.Load(), lineno=read.line, col_offset=read.col)
            self.soft_read = not read.certain
            try:
                self._load(read.name, use)
            finally:
                self.soft_read = False

    def _known_function(self, name: str) -> FunctionInfo | None:
        """The FunctionInfo of a module-level function called by name, if known."""
        if not self._is_module_name(name):
            return None
        if name in self.functions:
            return self.functions[name]
        if name in self.binds:  # rebound here: the earlier definition no longer applies
            return None
        return self.known.get(name)

    def _is_module_name(self, name: str) -> bool:
        """Whether ``name`` read here resolves to the module (not inside functions,
        where the binding may change before the code runs)."""
        scope = self.scope
        current = scope
        while current is not None:
            if not current.immediate:
                return False
            if current.kind == _CLASS:
                assert current.flow is not None
                if current is scope and name in current.flow.may:
                    return False
            elif name in current.locals:
                return False
            current = current.parent
        return True

    def _may_keep_state(self, name: str) -> bool:
        # Functions and classes defined or imported here, and builtins, are not data; and
        # CapWords names are classes by convention: calling those creates objects.
        if name in self.functions or name in self.imported or name[:1].isupper():
            return False
        return name not in _BUILTIN_NAMES or name in self.binds

    def _method_call(self, node: ast.Call, func: ast.Attribute) -> bool:
        """Apply the receiver rule of ``x.method(...)``; whether the arguments are safe."""
        if _is_pure_call(func):
            return True
        method = func.attr
        root = _root_name(func.value)
        changes_receiver = method not in _PURE_METHODS or _inplace(node)
        if root is not None and changes_receiver and root not in _MODULE_ALIASES:
            self._mutate(root, func)
        return method in _PURE_METHODS or method in _ARGUMENT_SAFE_METHODS

    def _lambda(self, node: ast.Lambda) -> None:
        self._defaults(node.args)
        scope = self._push(_LAMBDA, _parameters(node.args))
        self._expr(node.body)
        globals_ = self._pop()
        if globals_ is None:
            return
        self.lambda_parameters[node] = frozenset(
            p for p in _parameter_list(node.args) if p.lstrip("*") in scope.closed_mutated)
        # A lambda runs when called: ``name = lambda`` is a function (its reads count
        # where it is used); handed on or stored, it may run from here on. In a class
        # body it is also a method.
        self.lambdas[node] = globals_
        if self.owner is not None:
            self._charge_owner(globals_)
        if node in self.run_now:
            self._read_now(globals_)
        elif node is not self.stored_lambda:
            self._callback_reads(globals_, node)

    def _comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp
    ) -> None:
        generators = node.generators
        self._expr(generators[0].iter)  # evaluated in the enclosing scope
        flow = self._walrus_flow() if self.walrus else None
        saved = set(flow.must) if flow is not None else None
        targets = {n for g in generators for n in _target_names(g.target)}
        scope = self._push(_COMPREHENSION, targets)
        for index, generator in enumerate(generators):
            if index:
                self._expr(generator.iter)
            shared = _shared_names(generator.iter)
            for name in _target_names(generator.target):
                aliases = scope.aliases if index else scope.outer_aliases
                aliases.setdefault(name, set()).update(shared)
            self._target(generator.target)
            for condition in generator.ifs:
                self._expr(condition)
        if isinstance(node, ast.DictComp):
            self._expr(node.key)
            self._expr(node.value)
        else:
            self._expr(node.elt)
        self._pop()  # its reads were resolved on the spot, or go to the enclosing function
        if flow is not None and saved is not None:
            flow.must = saved  # it may iterate zero times: walrus binds are maybe


# --------------------------------------------------------------------------------------
# Combining cells
# --------------------------------------------------------------------------------------


def function_closure(names: Iterable[str], functions: Mapping[str, FunctionInfo]) -> frozenset[str]:
    """The globals read by the functions in ``names``, and by the functions they read."""
    reads: set[str] = set()
    for info in _reachable(names, functions):
        reads |= info.globals_read
    return frozenset(reads)


def function_writes(names: Iterable[str], functions: Mapping[str, FunctionInfo]) -> frozenset[str]:
    """The globals rebound or mutated by the functions in ``names``, transitively."""
    writes: set[str] = set()
    for info in _reachable(names, functions):
        writes |= info.globals_written
    return frozenset(writes)


def _reachable(names: Iterable[str], functions: Mapping[str, FunctionInfo]) -> list[FunctionInfo]:
    seen: set[str] = set()
    pending = [n for n in names if n in functions]
    found: list[FunctionInfo] = []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        info = functions[name]
        found.append(info)
        pending.extend(n for n in info.globals_read if n in functions and n not in seen)
    return found
