"""The step graph: which variables each step loads, from which step, and what it saves.

The provider of a name ``x`` for step S is the latest step before S, in notebook order,
that binds ``x`` or may mutate it. One pass over the steps with a "last writer" map makes
this linear in the size of the notebook.
"""

from __future__ import annotations

import bisect
import builtins
import gc
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field, replace

from .analysis import (
    CodeAnalysis,
    CodeSyntaxError,
    FunctionInfo,
    MagicLine,
    analyse_source,
    function_writes,
    strip_magics,
)
from .diagnostics import Diagnostic, error, has_errors, sort_diagnostics, warning
from .hazards import Hazard, find_hazards, might_have_hazards
from .magics import (
    LINE_MAGICS,
    PYTHON_CELL_MAGICS,
    SKIPPED_LINE_MAGICS,
    STEP_LOCAL_LINE_MAGICS,
    TEXT_CELL_MAGICS,
    magic_name,
)
from .notebook import Cell, Notebook
from .output_names import HISTORY, displaying_counts, execution_counts, reads_output_name
from .parameters import Metric, Parameter
from .pipeline import Blocks, Step, split_notebook
from .settings import NotebookSettings
from .sharing import Returns, ShareGroups

# Names a step can use without any provider: builtins and what Jupyter's kernel defines.
AMBIENT_NAMES = frozenset(dir(builtins)) | {
    "display",
    "get_ipython",
    "In",
    "Out",
    "_",
    "__",
    "___",
    "exit",
    "quit",
    "__name__",
    "__builtins__",
    "__file__",
    "__doc__",
}

PARAMETER = "<parameter>"  # provider marker for pipeline parameters


@dataclass(frozen=True)
class StepIO:
    """What a step exchanges with the others."""

    loads: Mapping[str, str]  # variable -> providing step
    parameters: tuple[str, ...]  # pipeline parameters it reads
    saves: tuple[str, ...]  # variables later steps load from it
    metrics: tuple[Metric, ...]  # metrics it reports
    writes: tuple[str, ...] = ()  # every variable it binds or may mutate
    # saved variables that may share objects, saved (and loaded) together, one file each
    groups: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    variables: tuple[str, ...]
    kind: str  # "data" (carries variables; also orders) | "order" (prev: only)


@dataclass(frozen=True)
class Pipeline:
    """A checked notebook: steps in notebook order, their inputs and outputs, and the DAG."""

    notebook: Notebook
    settings: NotebookSettings
    blocks: Blocks
    steps: tuple[Step, ...]
    io: Mapping[str, StepIO]
    edges: tuple[Edge, ...]
    levels: tuple[tuple[str, ...], ...]
    diagnostics: tuple[Diagnostic, ...]
    #: ``serve:VAR`` variables and the step whose value of each is served
    served: Mapping[str, str] = field(default_factory=dict)

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        return self.blocks.parameters

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return self.blocks.metrics

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


def build_pipeline(notebook: Notebook) -> Pipeline:
    """Split, analyse and connect a notebook. Problems are in ``Pipeline.diagnostics``."""
    blocks = split_notebook(notebook)
    builder = _GraphBuilder(blocks)
    # The analysis allocates many short-lived, acyclic objects: the cyclic collector only
    # slows it down (15-20 % on large notebooks).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        builder.run()
    finally:
        if was_enabled:
            gc.enable()
    diagnostics = sort_diagnostics([*blocks.diagnostics, *builder.problems])
    edges = builder.edges()
    return Pipeline(
        notebook=notebook,
        settings=blocks.settings,
        blocks=blocks,
        steps=blocks.steps,
        io=_LazyIO(builder.io),
        edges=edges,
        levels=_levels(blocks.steps, edges),
        diagnostics=tuple(diagnostics),
        served=dict(builder.served),
    )


class _LazyIO(Mapping[str, StepIO]):
    """``Pipeline.io``, worked out when first read: checking a notebook does not need it.
    It pickles and copies as a dict."""

    __slots__ = ("_make", "_io")

    def __init__(self, make: Callable[[], dict[str, StepIO]]) -> None:
        self._make = make
        self._io: dict[str, StepIO] | None = None

    def _value(self) -> dict[str, StepIO]:
        io = self._io
        if io is None:
            io = self._io = self._make()
        return io

    def __getitem__(self, name: str) -> StepIO:
        return self._value()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._value())

    def __len__(self) -> int:
        return len(self._value())

    def __repr__(self) -> str:
        return repr(self._value())

    def __reduce__(self) -> tuple[type[dict[str, StepIO]], tuple[dict[str, StepIO]]]:
        return dict, (self._value(),)


# --- analysis of cell groups --------------------------------------------------------------


_LAST_INDEX = float("inf")  # sorts after every cell index, for _Located.where


class _Located:
    """An analysis of several cells joined together, with a map back to cells. (A plain
    class: making a dataclass costs as much as compiling a small module.)"""

    __slots__ = ("analysis", "starts", "magics")

    def __init__(self, analysis: CodeAnalysis, starts: tuple[tuple[int, int], ...],
                 magics: tuple[MagicLine, ...]) -> None:
        self.analysis = analysis
        self.starts = starts  # (first joined line, cell index)
        self.magics = magics  # with joined line numbers

    def where(self, line: int) -> tuple[int, int]:
        """The cell and the line in it of a joined line (the last cell starting before)."""
        found = bisect.bisect_right(self.starts, (line, _LAST_INDEX)) - 1
        if found < 0:
            return self.starts[0][1], line
        first, cell = self.starts[found]
        return cell, line - first + 1


def _analyse_cells(
    cells: list[Cell],
    step: str | None,
    problems: list[Diagnostic],
    functions: Mapping[str, FunctionInfo] | None = None,
    code_held: Mapping[str, frozenset[str]] | None = None,
    returns: Mapping[str, Returns] | None = None,
) -> _Located | None:
    """Analyse cells as one program, so flow across cells is exact; None on syntax errors."""
    sources: list[str] = []
    starts: list[tuple[int, int]] = []
    magics: list[MagicLine] = []
    line = 1
    for cell in cells:
        # IPython syntax is per cell (a %%magic only counts on a cell's first line), so it is
        # turned into Python before the cells are joined; line numbers are kept.
        text = cell.source
        if "%" in text or "!" in text or "?" in text:
            text, found_magics = strip_magics(text)
            magics += [replace(m, line=m.line + line - 1) for m in found_magics]
        text = text if text.endswith("\n") or not text else text + "\n"
        sources.append(text)
        starts.append((line, cell.index))
        line += text.count("\n")
    try:
        analysis = analyse_source("".join(sources), functions, code_held, returns=returns)
        return _Located(analysis, tuple(starts), tuple(magics))
    except CodeSyntaxError:
        pass
    found = False
    for cell in cells:  # find the culprit cell, giving the cell-relative line
        try:
            analyse_source(cell.source)
        except CodeSyntaxError as exc:
            found = True
            problems.append(
                error(
                    "NB101",
                    f"syntax error: {exc.message}",
                    cell=cell.index,
                    line=exc.line,
                    step=step,
                )
            )
    if not found:  # valid cells that are invalid together: a late `from __future__` import
        problems.append(
            error(
                "NB101",
                "a `from __future__ import` must be in the first cell of the imports block",
                cell=starts[0][1],
                step=step,
            )
        )
    return None


# --- the provider rule ---------------------------------------------------------------------


class _StepState:
    """What the graph builder learns about a step (a plain class, as _Located)."""

    __slots__ = ("loads", "parameters", "saves", "metrics", "writes", "reads", "hazards",
                 "partial", "start_groups", "start_keys", "clock")

    def __init__(self) -> None:
        self.loads: dict[str, str] = {}
        self.parameters: list[str] = []
        self.saves: set[str] = set()
        self.metrics: list[Metric] = []
        self.writes: frozenset[str] = frozenset()
        self.reads: frozenset[str] = frozenset()
        self.hazards: list[tuple[Hazard, int, int]] = []  # (hazard, cell, line)
        # names the step binds only on some paths, with their provider when the step ran:
        # if the step provides such a name, it must start from the earlier value
        self.partial: dict[str, str | None] = {}
        # may-share group tokens (see ShareGroups) of the names it loads, as they were when
        # the step started (names in a group only, of those it reads, may change through a
        # group or binds on some paths: start_keys); those of the names it writes, when it
        # ended, are ShareGroups.token_at(name, clock + 1)
        self.start_groups: dict[str, int] = {}
        self.start_keys: tuple[Container[str], ...] = ()
        self.clock = 0  # the groups' clock when it started (ShareGroups.token_at)


class _GraphBuilder:
    def __init__(self, blocks: Blocks):
        self.blocks = blocks
        self.problems: list[Diagnostic] = []
        self.state: dict[str, _StepState] = {s.name: _StepState() for s in blocks.steps}
        self.last_writer: dict[str, str] = {}
        self.functions: dict[str, FunctionInfo] = {}
        self.deleted_by: dict[str, str] = {}
        # those of deleted_by deleted by the end of an ``except ... as`` clause
        self.deleted_by_clause: set[str] = set()
        self.served: dict[str, str] = {}
        self.prelude_names: frozenset[str] = frozenset()
        self.star_prelude = False
        self.groups = ShareGroups()
        self.returns: dict[str, Returns] = {}
        self.parameter_names = frozenset(p.name for p in blocks.parameters)
        # Deferred reads: where each function was defined (for the line of a read in its
        # body), the values holding notebook code with the globals it reads, every name
        # some step binds, and reads of handed-on code that found no provider (an error
        # only if no step binds the name at all).
        self.defined_in: dict[str, _Located] = {}
        self.code_held: dict[str, frozenset[str]] = {}
        self.ever_bound: set[str] = set()
        self.unprovided: list[tuple[str, str, tuple[int, int], str]] = []
        # steps whose displayed values no step has read yet (see _displayed)
        self.undisplayed: list[Step] = []
        self.carried: dict[str, tuple[tuple[str, bool], ...]] = {}
        self.output_counts: dict[int, int] | None = None
        # imports/functions-cell functions that draw random numbers or change settings
        self.function_touches: dict[str, tuple[set[str], set[str]]] = {}
        self.settings_written: set[str] = set()  # settings some step changed

    def run(self) -> None:
        self._prelude()
        params = {p.name: p for p in self.blocks.parameters}
        for name in params:
            self.last_writer[name] = PARAMETER
            self.ever_bound.add(name)
        events: list[tuple[int, Step | Cell]] = [(s.position, s) for s in self.blocks.steps]
        events += [(c.index, c) for c in self.blocks.metric_cells]
        for _, item in sorted(events, key=lambda e: e[0]):
            if isinstance(item, Step):
                self._step(item)
            else:
                self._metrics_cell(item)
        self._serve()
        self._load_partial_bindings()
        while self._unify_shared_loads():  # new loads may start from earlier values in turn
            self._load_partial_bindings()
        self._check_unprovided()
        _check_split_steps(self.blocks.steps, self.state, self.problems)
        _check_hazards(self.blocks, self.state, self.edges, self.problems)
        # A name missing because a split step runs too early is that cycle, said once.
        cycles = {d.cell for d in self.problems if d.code == "NB104"}
        self.problems = [d for d in self.problems if not (d.code == "NB103" and d.cell in cycles)]

    def _prelude(self) -> None:
        cells = [*self.blocks.imports, *self.blocks.functions]
        if not cells:
            return
        located = _analyse_cells(cells, None, self.problems)
        if located is None:
            return
        a = located.analysis
        self._check_magics(located, None)
        _string_notes(located, None, self.problems)
        self.prelude_names = a.binds
        self._learn_code(a, located)
        self.returns.update(a.returns or {})
        self.function_touches = _function_touches(cells)
        self.star_prelude = bool(a.star_imports)
        for use in a.star_imports:
            cell, line = located.where(use.line)
            self.problems.append(
                warning(
                    "NB102",
                    f"`from {use.name} import *`: the names it brings in cannot be checked; "
                    "names no step defines are assumed to come from it",
                    cell=cell,
                    line=line,
                )
            )

    def _step(self, step: Step) -> None:
        located = _analyse_cells(
            list(step.cells), step.name, self.problems, self.functions, self.code_held,
            self.returns,
        )
        if located is None:
            return
        a = located.analysis
        state = self.state[step.name]
        self._check_magics(located, step.name)
        _string_notes(located, step.name, self.problems)
        state.hazards = _cell_hazards(step.cells)
        needed, called = self._needed(a)
        if self.undisplayed and any(reads_output_name(name) for name in needed):
            self._displayed()
        self._carried_reads(needed)
        deferred = a.deferred_via
        for name, line in needed.items():
            # `_5` may be shown by this step's own earlier cell: like `_`, never an error
            maybe = name in a.maybe_free or reads_output_name(name)
            if name in deferred and name not in self.last_writer:  # maybe an error: where
                where, via = self._read_site(located, name, line)
                self._resolve(step, state, name, where, maybe, via)
            else:
                self._resolve(step, state, name, located.where(line), maybe)
        for use in a.callback_free:
            self._resolve_callback(step, state, located, use.name, use.line)
        self._process_state(step, state, called)
        state.partial = {name: self.last_writer.get(name) for name in a.partial_binds}
        for use in a.star_imports:
            cell, line = located.where(use.line)
            self.problems.append(
                warning(
                    "NB102",
                    f"`from {use.name} import *` in a step: the names it brings in cannot be "
                    "passed to later steps; move the import to an imports cell",
                    cell=cell,
                    line=line,
                    step=step.name,
                )
            )
        # Calling a builtin, an imports/functions-cell name or a function defined with `def`
        # does not change it (its global writes are counted separately): no data to pass.
        mutated = {n for n in a.mutates if not self._is_code(n)}
        writes = a.binds | mutated | function_writes(called, self.functions)
        writes |= self._shared_writes(state, a, mutated, writes, needed)
        state.writes = writes
        state.reads = frozenset(needed).union(use.name for use in a.callback_free)
        self.last_writer.update(dict.fromkeys(writes, step.name))
        if self.deleted_by:
            for name in writes & self.deleted_by.keys():
                del self.deleted_by[name]
                self.deleted_by_clause.discard(name)
        for name in a.deletes:
            self.last_writer.pop(name, None)
            self.deleted_by[name] = step.name
            if name in a.clause_deletes:
                self.deleted_by_clause.add(name)
            else:
                self.deleted_by_clause.discard(name)
        self._learn_code(a, located)
        self.returns.update(a.returns or {})
        self.undisplayed.append(step)
        if self.carried:
            for name in writes & self.carried.keys():
                del self.carried[name]
        self.carried.update(a.carries)
        if state.hazards:  # functions this step defines that later steps may call
            self.function_touches.update(_function_touches(list(step.cells)))

    def _learn_code(self, a: CodeAnalysis, located: _Located) -> None:
        """Remember the functions and code-holding values a step or the prelude leaves."""
        self.functions.update(a.functions)
        for name in a.functions:
            self.defined_in[name] = located
        self.ever_bound |= a.binds
        if self.code_held:
            for name in a.binds - a.partial_binds:
                self.code_held.pop(name, None)
            for name in a.deletes:
                self.code_held.pop(name, None)
        for name, reads in a.code_held.items():
            if name in a.binds or not self._is_code(name):  # each step re-runs the prelude
                self.code_held[name] = self.code_held.get(name, frozenset()) | reads

    def _carried_reads(self, needed: dict[str, int]) -> None:
        """A formula model received from another step re-evaluates its formula when it is
        restored: the step needs what the formula reads (a value name when some step binds
        it; it may be a column)."""
        for name in [n for n in needed if n in self.carried]:
            for read, certain in self.carried[name]:
                if certain or read in self.last_writer:
                    needed.setdefault(read, needed[name])

    def _displayed(self) -> None:
        """A cell showing its last expression's value (maybe) binds IPython's output names.

        Done for the earlier steps, in order, once a step reads one of those names: most
        notebooks never do. They are partial bindings (a None value shows nothing), and not
        among the steps' writes: they are loaded and saved only when a later step reads them."""
        if self.output_counts is None:
            self.output_counts = execution_counts(self.blocks.notebook)
        for step in self.undisplayed:
            shown = displaying_counts(step.cells, self.output_counts)
            partial = self.state[step.name].partial
            for name in [*HISTORY, *(f"_{n}" for n in shown)] if shown else []:
                partial.setdefault(name, self.last_writer.get(name))
                self.last_writer[name] = step.name
        self.undisplayed.clear()

    def _process_state(self, step: Step, state: _StepState, called: list[str]) -> None:
        """Library settings and global random generators, as pseudo-variables.

        A step that changes a library's settings or draws from a global generator mutates
        its pseudo-variable (it starts from the state the provider left, and provides it);
        a seed binds it. Settings changed by an earlier step are in force in every later
        step, as in the kernel, so every later step loads them.
        """
        reads, writes = _touches(state.hazards)
        for name in called:
            function_reads, function_writes_ = self.function_touches.get(name, ((), ()))
            reads |= set(function_reads)
            writes |= set(function_writes_)
        reads |= self.settings_written
        for name in sorted(reads):
            provider = self.last_writer.get(name)
            if provider is not None and provider != PARAMETER:
                state.loads[name] = provider
                self.state[provider].saves.add(name)
        if writes:
            from .process_state import is_settings  # (the runtime half: loaded when needed)

            for name in writes:
                self.last_writer[name] = step.name
            self.settings_written |= {n for n in writes if is_settings(n)}

    def _load_partial_bindings(self) -> None:
        """A step that binds ``x`` on some paths only saves the earlier ``x`` on the others.

        So when it provides ``x``, it loads ``x`` from the step before it. Walking backwards
        lets a load added here make an earlier step a provider in turn.
        """
        for step in reversed(self.blocks.steps):
            state = self.state[step.name]
            # a display shifts the history: saving `__` needs the `_` from before
            history = {n for s in state.saves & HISTORY.keys() for n in HISTORY[s]}
            keys = state.start_keys
            for name in sorted((state.saves | history) & state.partial.keys()):
                provider = state.partial[name]
                if provider == PARAMETER:
                    state.parameters.append(name)
                elif provider is not None and name not in state.loads:
                    state.loads[name] = provider
                    self.state[provider].saves.add(name)
                    # (its may-share token as the step started, as for its other loads)
                    if keys and (name in keys[0] or name in keys[1] or name in keys[2]):
                        token = self.groups.token_at(name, state.clock)
                        if token is not None:
                            state.start_groups[name] = token

    def _shared_writes(self, state: _StepState, a: CodeAnalysis, mutated: set[str],
                       writes: frozenset[str], needed: Mapping[str, int]) -> set[str]:
        """Names the step may change through another name of their may-share group.

        The step provides them too, so it starts from their earlier values (loaded with
        the names it changes them through). Then the step's own sharing is recorded.
        """
        groups = self.groups
        state.clock = groups.clock
        shares = [g - self.parameter_names for g in a.shares]
        shares = [g for g in shares if len(g) > 1 and self._no_code(g)]
        extra: set[str] = set()
        if mutated and (shares or any(groups.token(n) is not None for n in mutated)):
            last_writer = self.last_writer
            extra = self._not_code(groups.closure(mutated, shares) - writes)
            extra = extra & last_writer.keys()  # the names some step or a parameter provides
            if self.parameter_names:  # (those of the pipeline parameters: not data to load)
                extra -= {n for n in extra & self.parameter_names if last_writer[n] == PARAMETER}
            if extra:
                # They may be changed on some paths only: the step starts from their values.
                providers: dict[str, str | None] = dict(
                    zip(extra, map(last_writer.__getitem__, extra), strict=True))
                providers.update(state.partial)
                state.partial = providers
        # (the tokens of the names it loads so far; those it loads later are added then)
        state.start_keys = (needed, extra, a.partial_binds)
        partial_binds = a.partial_binds
        state.start_groups.update(groups.tokens(
            [n for n in state.loads if n in needed or n in extra or n in partial_binds]))
        groups.update(a.rebound, shares)  # ``x += 1`` keeps x's object: not a rebinding
        return extra

    def _not_code(self, names: set[str]) -> set[str]:
        """Those of ``names`` that are not code (see _is_code), in place."""
        names -= AMBIENT_NAMES
        names -= self.prelude_names
        names -= self.functions.keys() & names  # (walks the smaller of the two)
        return names

    def _no_code(self, names: frozenset[str]) -> bool:
        """Whether none of ``names`` is code (see _is_code)."""
        return (names.isdisjoint(AMBIENT_NAMES) and names.isdisjoint(self.prelude_names)
                and self.functions.keys().isdisjoint(names))

    def _unify_shared_loads(self) -> bool:
        """Names that may share objects come from one step, so they arrive sharing them.

        When a step would load names of one group from several providers, it loads them
        all from the latest one, which loads (if it does not already) and saves the
        others. Walking backwards lets that step's loads be unified in turn. Returns
        whether a step now saves something it did not.
        """
        order = {s.name: i for i, s in enumerate(self.blocks.steps)}
        saves = sum(len(s.saves) for s in self.state.values())
        for step in reversed(self.blocks.steps):
            state = self.state[step.name]
            by_group: dict[int, list[str]] = {}
            start_groups = state.start_groups
            for name in state.loads:
                token = start_groups.get(name)
                if token is not None:
                    by_group.setdefault(token, []).append(name)
            for names in by_group.values():
                if len({state.loads[n] for n in names}) > 1:
                    latest = max((state.loads[n] for n in names), key=order.__getitem__)
                    self._load_from(state, names, latest)
        return sum(len(s.saves) for s in self.state.values()) > saves

    def _load_from(self, state: _StepState, names: list[str], latest: str) -> None:
        provider = self.state[latest]
        for name in names:
            earlier = state.loads[name]
            if earlier == latest:
                continue
            state.loads[name] = latest
            provider.saves.add(name)
            if name not in provider.loads and name not in provider.writes:
                provider.loads[name] = earlier
                token = self.groups.token_at(name, provider.clock)
                if token is not None:  # it must come with its group there too
                    provider.start_groups[name] = token
                self.state[earlier].saves.add(name)

    def _check_magics(self, located: _Located, step: str | None) -> None:
        for magic in located.magics:
            kind, name = magic_name(magic.text)
            cell, line = located.where(magic.line)
            if kind == "line" and name in STEP_LOCAL_LINE_MAGICS and step is not None:
                self.problems.append(
                    warning(
                        "NB106",
                        f"%{name} changes this step's process only: later steps start in "
                        "the notebook's directory with the original environment; put it in an "
                        "imports cell if every step needs it",
                        cell=cell,
                        line=line,
                        step=step,
                    )
                )
            elif (
                kind == "line"
                and name not in LINE_MAGICS | SKIPPED_LINE_MAGICS
                and not name.endswith("?")
                and "?" not in magic.text
            ):
                self.problems.append(
                    error(
                        "NB106",
                        f"the magic %{name} cannot run in a pipeline step; remove it or "
                        "tag its cell skip",
                        cell=cell,
                        line=line,
                        step=step,
                    )
                )
            elif kind == "cell" and name not in PYTHON_CELL_MAGICS | TEXT_CELL_MAGICS:
                self.problems.append(
                    error(
                        "NB106",
                        f"the cell magic %%{name} cannot run in a pipeline step; remove it "
                        "or tag the cell skip",
                        cell=cell,
                        line=line,
                        step=step,
                    )
                )

    def _is_code(self, name: str) -> bool:
        return name in AMBIENT_NAMES or name in self.prelude_names or name in self.functions

    def _needed(self, a: CodeAnalysis) -> tuple[dict[str, int], list[str]]:
        """Names the step reads from outside (with the joined-source line of the first use),
        and the functions defined outside the step that it uses.

        A function defined in an earlier cell reads its globals when called: the analysis
        counts them at the call (unless the step binds them before it).
        """
        needed = {use.name: use.line for use in a.free}
        called = [name for name in needed if name in self.functions]
        return needed, called

    def _read_site(
        self, located: _Located, name: str, line: int
    ) -> tuple[tuple[int, int], str | None]:
        """Where to report a missing name: the read itself when code that runs later
        reads it (with what made that code run), else where the step reads it."""
        via = located.analysis.deferred_via.get(name)
        if via is None:
            return located.where(line), None
        owner, read_line = via
        where = located.where(line)
        used = f"used at cell {where[0]}, line {where[1]}"
        if owner in self.functions or owner in located.analysis.functions:
            call = f"{owner!r} ({used})"
        elif owner == "a lambda":
            call = f"a lambda ({used})"
        else:
            call = f"code held by {owner!r} ({used})"
        if read_line:
            return located.where(read_line), call
        info = self.functions.get(owner)
        home = self.defined_in.get(owner)
        if info is not None and home is not None:
            lines = dict(info.read_at)
            if lines.get(name):
                return home.where(lines[name]), call
        return where, call

    def _resolve_callback(
        self, step: Step, state: _StepState, located: _Located, name: str, line: int
    ) -> None:
        """A read by code that may run from here on: provided if some step provides it."""
        provider = self.last_writer.get(name)
        if provider == PARAMETER:
            state.parameters.append(name)
        elif provider is not None:
            state.loads[name] = provider
            self.state[provider].saves.add(name)
        elif not (name in self.prelude_names or name in AMBIENT_NAMES or self.star_prelude):
            where, via = self._read_site(located, name, line)
            self.unprovided.append((step.name, name, where, via or "code run from here"))

    def _check_unprovided(self) -> None:
        """Code handed on may run after a later step binds what it reads; a name that no
        step binds at all is an error, at the read."""
        reported: set[str] = set()
        for step, name, where, via in self.unprovided:
            if name in self.ever_bound or name in self.deleted_by or name in reported:
                continue
            reported.add(name)  # at its first read: the others are the same mistake
            self.problems.append(
                error(
                    "NB103",
                    f"{name!r} is read by {via} but no step defines it; define it in an "
                    "earlier step, or in an imports/functions cell if every step needs it",
                    cell=where[0],
                    line=where[1],
                    step=step,
                )
            )

    def _resolve(
        self,
        step: Step,
        state: _StepState,
        name: str,
        where: tuple[int, int],
        maybe: bool,
        via: str | None = None,
    ) -> None:
        provider = self.last_writer.get(name)
        if provider == PARAMETER:
            state.parameters.append(name)
        elif provider is not None:
            state.loads[name] = provider
            self.state[provider].saves.add(name)
        elif name in self.prelude_names or name in AMBIENT_NAMES or self.star_prelude or maybe:
            return  # `maybe`: bound on the paths that read it, within the step
        else:
            cell, line = where
            self.problems.append(
                error(
                    "NB103",
                    self._undefined_message(step, name, via),
                    cell=cell,
                    line=line,
                    step=step.name,
                )
            )

    def _undefined_message(self, step: Step, name: str, via: str | None = None) -> str:
        if via is not None:
            return self._undefined_message(step, name).replace(
                f"{name!r} is used", f"{name!r} is read by {via}", 1
            )
        if name in self.deleted_by_clause:
            return (
                f"{name!r} is used but step {self.deleted_by[name]!r} may have deleted it: "
                f"Python deletes the name of `except ... as {name}` when the clause ends; "
                f"keep the exception under another name in the clause (error = {name})"
            )
        if name in self.deleted_by:
            return (
                f"{name!r} is used but step {self.deleted_by[name]!r} deleted it (del {name}); "
                "keep the variable or recompute it in this step"
            )
        later = _later_definer(self.blocks.steps, step, name)
        if later is not None:
            return (
                f"{name!r} is used but no earlier step defines it: step {later[0]!r} (cell "
                f"{later[1]}) defines it later; move that cell above, or define {name!r} here"
            )
        params = {p.name for p in self.blocks.parameters}
        if name in params:
            return f"{name!r} is used before the pipeline-parameters cell that defines it"
        return (
            f"{name!r} is used but no earlier step defines it; define it in an earlier step, "
            "or in an imports/functions cell if every step needs it"
        )

    def _metrics_cell(self, cell: Cell) -> None:
        for metric in (m for m in self.blocks.metrics if m.cell == cell.index):
            provider = self.last_writer.get(metric.variable)
            if provider is None or provider == PARAMETER:
                what = (
                    "is a pipeline parameter, not a computed value"
                    if provider
                    else "is not defined by any step above the metrics cell"
                )
                self.problems.append(
                    error(
                        "NB305",
                        f"metric {metric.name!r}: {metric.variable!r} {what}",
                        cell=metric.cell,
                        line=metric.line,
                    )
                )
            else:
                self.state[provider].metrics.append(metric)

    def _serve(self) -> None:
        """A ``serve:VAR`` variable's final value is the model: its last writer saves it."""
        for name, cell in self.blocks.serves:
            provider = self.last_writer.get(name)
            if provider is None or provider == PARAMETER:
                self.problems.append(
                    error(
                        "NB801",
                        f"serve:{name}: no step computes {name!r}; tag the variable that holds "
                        "the trained model",
                        cell=cell,
                    )
                )
                continue
            self.served[name] = provider
            self.state[provider].saves.add(name)

    def io(self) -> dict[str, StepIO]:
        groups = self._save_groups()
        return {
            name: StepIO(
                loads=dict(sorted(s.loads.items())),
                parameters=tuple(sorted(set(s.parameters))),
                saves=tuple(sorted(s.saves)),
                metrics=tuple(s.metrics),
                writes=tuple(sorted(s.writes)),
                groups=groups[name],
            )
            for name, s in self.state.items()
        }

    def _save_groups(self) -> dict[str, tuple[tuple[str, ...], ...]]:
        """Each step's saved names that may share objects: each group is saved as one file.

        Names share a file when they were in one may-share group as the step ended, or
        when a later step loads them from it as one group.
        """
        together: dict[str, list[list[str]]] = {name: [] for name in self.state}
        for consumer in self.state.values():
            by_group: dict[tuple[str, int], list[str]] = {}
            start_groups = consumer.start_groups
            for name, provider in consumer.loads.items():
                token = start_groups.get(name)
                if token is not None and provider in together:
                    by_group.setdefault((provider, token), []).append(name)
            for (provider, _), names in by_group.items():
                if len(names) > 1:
                    together[provider].append(names)
        result = {}
        for step, state in self.state.items():
            by_token: dict[int, list[str]] = {}
            writes, end = state.writes, state.clock + 1
            token_at = self.groups.token_at
            for name in state.saves:
                token = token_at(name, end) if name in writes else None
                if token is not None:
                    by_token.setdefault(token, []).append(name)
            joined = [names for names in by_token.values() if len(names) > 1]
            joined += together[step]
            result[step] = _partition(state.saves, joined) if joined else ()
        return result

    def edges(self) -> tuple[Edge, ...]:
        data: dict[tuple[str, str], list[str]] = {}
        for target, state in self.state.items():
            for variable, source in state.loads.items():
                data.setdefault((source, target), []).append(variable)
        edges = [Edge(s, t, tuple(sorted(v)), "data") for (s, t), v in data.items()]
        for step in self.blocks.steps:
            edges += [
                Edge(p, step.name, (), "order") for p in step.prev if (p, step.name) not in data
            ]
        order = {s.name: i for i, s in enumerate(self.blocks.steps)}
        return tuple(sorted(edges, key=lambda e: (order[e.target], order[e.source])))


def _partition(names: set[str], joined: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    """The groups of two or more of ``names`` that the ``joined`` lists connect."""
    parent: dict[str, str] = {}  # the names of a list of two or more of them

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for listed in joined:
        members = [m for m in listed if m in names]
        if len(members) < 2:
            continue
        for member in members:
            parent.setdefault(member, member)
        first = find(members[0])
        for other in members[1:]:
            parent[find(other)] = first  # (first stays a root)
    found: dict[str, list[str]] = {}
    for name in sorted(parent):
        found.setdefault(find(name), []).append(name)
    return tuple(tuple(g) for g in found.values() if len(g) > 1)
def _string_notes(located: _Located, step: str | None, problems: list[Diagnostic]) -> None:
    """A formula or pandas expression whose names cannot be read (built at run time, or
    its library is not installed here)."""
    for note in located.analysis.string_notes:
        cell, line = located.where(note.line)
        problems.append(
            warning(
                "NB105",
                f"{note.call}: {note.reason}",
                cell=cell,
                line=line,
                step=step,
            )
        )


def _later_definer(steps: tuple[Step, ...], step: Step, name: str) -> tuple[str, int] | None:
    """The first later step that binds ``name`` (only computed on the error path)."""
    for other in steps:
        if other.position <= step.position:
            continue
        for cell in other.cells:
            try:
                if name in analyse_source(cell.source).binds:
                    return other.name, cell.index
            except CodeSyntaxError:
                continue
    return None


def _check_split_steps(
    steps: tuple[Step, ...], state: Mapping[str, _StepState], problems: list[Diagnostic]
) -> None:
    """A step whose cells are interleaved with another step's must not exchange values with it.

    The step runs all its cells at its first cell's position; if a step placed between its
    parts writes a value a later part reads, or reads a value a later part writes, the
    pipeline would compute something else than the notebook: a cycle.
    """
    positions = [s.position for s in steps]  # ascending: steps are in notebook order
    for i, step in enumerate(steps):
        for cell in step.cells[1:]:
            end = bisect.bisect_left(positions, cell.index, lo=i + 1)
            between = steps[i + 1 : end]  # steps starting between the first cell and this one
            if not between:
                continue
            try:
                a = analyse_source(cell.source)
            except CodeSyntaxError:
                continue
            reads = {u.name for u in a.free}
            writes = a.binds | a.mutates
            for other in between:
                o = state[other.name]
                clash = sorted((o.writes & reads) | (o.reads & writes))
                if clash:
                    problems.append(
                        error(
                            "NB104",
                            f"cell {cell.index} belongs to step {step.name!r}, which runs at "
                            f"cell {step.position}, before step {other.name!r} "
                            f"(cell {other.position}); "
                            f"both use {', '.join(repr(c) for c in clash)}, so the pipeline would "
                            f"differ from the notebook: give cell {cell.index} its own step name",
                            cell=cell.index,
                            step=step.name,
                        )
                    )
                    break


def _levels(steps: tuple[Step, ...], edges: tuple[Edge, ...]) -> tuple[tuple[str, ...], ...]:
    """Steps grouped by depth in the DAG: each level's steps can run in parallel."""
    preds: dict[str, list[str]] = {s.name: [] for s in steps}
    for edge in edges:
        preds[edge.target].append(edge.source)
    depth: dict[str, int] = {}
    for step in steps:  # notebook order is a topological order
        depth[step.name] = 1 + max((depth[p] for p in preds[step.name]), default=-1)
    levels: dict[int, list[str]] = {}
    for step in steps:
        levels.setdefault(depth[step.name], []).append(step.name)
    return tuple(tuple(levels[d]) for d in sorted(levels))


def _cell_hazards(cells: tuple[Cell, ...]) -> list[tuple[Hazard, int, int]]:
    found = []
    for cell in cells:
        if not might_have_hazards(cell.source):
            continue
        source = strip_magics(cell.source)[0]
        found += [(h, cell.index, h.line) for h in find_hazards(source)]
    return found


def _touches(hazards: list[tuple[Hazard, int, int]]) -> tuple[set[str], set[str]]:
    """The pseudo-variables (settings, generators) hazards read and write."""
    reads: set[str] = set()
    writes: set[str] = set()
    if not hazards:
        return reads, writes
    from .process_state import RNG_FAMILIES, SETTINGS_FAMILIES, rng_name, settings_name

    for hazard, _, _ in hazards:
        if hazard.kind == "seed" and hazard.detail in RNG_FAMILIES:
            writes.add(rng_name(hazard.detail))
        elif hazard.kind == "random" and hazard.detail in RNG_FAMILIES:
            reads.add(rng_name(hazard.detail))
            writes.add(rng_name(hazard.detail))
        elif hazard.kind == "setting" and hazard.detail in SETTINGS_FAMILIES:
            reads.add(settings_name(hazard.detail))
            writes.add(settings_name(hazard.detail))
    return reads, writes


def _function_touches(cells: list[Cell]) -> dict[str, tuple[set[str], set[str]]]:
    """For each function the imports/functions cells define, the state its calls touch."""
    import ast

    out: dict[str, tuple[set[str], set[str]]] = {}
    for cell in cells:
        if not might_have_hazards(cell.source):
            continue
        try:
            tree = ast.parse(strip_magics(cell.source)[0])
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found = [(h, cell.index, h.line) for h in find_hazards(ast.unparse(node))]
                reads, writes = _touches(found)
                if reads or writes:
                    out[node.name] = (reads, writes)
    return out


def _check_hazards(
    blocks: Blocks,
    state: Mapping[str, _StepState],
    edges: Callable[[], tuple[Edge, ...]],
    problems: list[Diagnostic],
) -> None:
    """Known limits: state outside Python variables that a later step would not see."""
    steps = blocks.steps
    if len(steps) < 2 or not any(state[s.name].hazards for s in steps):
        return
    prelude_seeds = {
        h.detail
        for c in [*blocks.imports, *blocks.functions]
        for h, _, _ in _cell_hazards((c,))
        if h.kind == "seed"
    }
    ancestors = _ancestors(steps, edges())
    from .process_state import RNG_FAMILIES
    seeded: dict[str, tuple[str, int]] = {}
    written: dict[str, tuple[str, int]] = {}
    for i, step in enumerate(steps):
        hazards = state[step.name].hazards
        own_seeds = {h.detail for h, _, _ in hazards if h.kind == "seed"}
        for hazard, cell, line in hazards:
            if hazard.kind in ("environment", "uncarried") and i < len(steps) - 1:
                problems.append(
                    warning(
                        "NB105",
                        f"{hazard.detail} changes this step's process only: later steps "
                        "do not see it; set it in an imports cell if every step needs it",
                        cell=cell,
                        line=line,
                        step=step.name,
                    )
                )
            elif (
                hazard.kind == "random"
                and hazard.detail not in RNG_FAMILIES  # those continue their stream
                and hazard.detail in seeded
                and hazard.detail not in own_seeds | prelude_seeds
            ):
                src, src_cell = seeded[hazard.detail]
                problems.append(
                    warning(
                        "NB105",
                        f"this step draws {hazard.detail} random numbers, but the seed was "
                        f"set in step {src!r} (cell {src_cell}), another process: seed here or in "
                        "the imports cell to get the notebook's numbers",
                        cell=cell,
                        line=line,
                        step=step.name,
                    )
                )
                seeded.pop(hazard.detail)
            elif hazard.kind == "read" and hazard.detail in written:
                src, src_cell = written[hazard.detail]
                if src != step.name and src not in ancestors[step.name]:
                    problems.append(
                        warning(
                            "NB105",
                            f"this step reads {hazard.detail!r}, which step {src!r} writes "
                            f"(cell {src_cell}), but it does not run after {src!r}: add prev:{src} "
                            "to this step's first cell",
                            cell=cell,
                            line=line,
                            step=step.name,
                        )
                    )
        for hazard, cell, _ in hazards:
            if hazard.kind == "seed":
                seeded[hazard.detail] = (step.name, cell)
            elif hazard.kind == "write":
                written[hazard.detail] = (step.name, cell)


def _ancestors(steps: tuple[Step, ...], edges: tuple[Edge, ...]) -> dict[str, set[str]]:
    preds: dict[str, list[str]] = {s.name: [] for s in steps}
    for edge in edges:
        preds[edge.target].append(edge.source)
    out: dict[str, set[str]] = {}
    for step in steps:  # notebook order is topological
        found: set[str] = set()
        for p in preds[step.name]:
            found.add(p)
            found |= out[p]
        out[step.name] = found
    return out
