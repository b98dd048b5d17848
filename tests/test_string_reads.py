"""Names read through strings: formulas and pandas expressions (kale_py.string_reads).

patsy, formulaic and pandas are the oracles: a formula evaluated with only the names
found (plus its data) must work, and each name found as certain must be needed.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import numpy as np
import pandas as pd
import patsy
import pytest
from formulaic import model_matrix

from kale_py.analysis import analyse_source
from kale_py.string_reads import call_reads, expression_reads, formula_reads


def double_it(v: object) -> object:
    return v * 2  # type: ignore[operator]


DATA = pd.DataFrame({"x": np.arange(1.0, 9.0), "y": np.arange(8.0), "g": ["a", "b"] * 4})
NOTEBOOK = {"np": np, "double_it": double_it, "power": 2, "offset": 1.5}

FORMULAS = [
    "y ~ np.log(x)",
    "y ~ double_it(x) + C(g)",
    "y ~ I(x ** power) + center(x)",
    "np.log(y + offset) ~ standardize(x) + C(g, Treatment('b')) + Q('x')",
    "y ~ x:g + np.exp(x / double_it(power))",
]


def _patsy_ok(formula: str, names: dict[str, object]) -> bool:
    try:
        patsy.dmatrices(formula, DATA, eval_env=patsy.EvalEnvironment([names]))
    except patsy.PatsyError:
        return False
    return True


@pytest.mark.parametrize("formula", FORMULAS)
def test_patsy_formula_reads_are_what_patsy_needs(formula: str) -> None:
    found = formula_reads(formula, "patsy")
    names = {n: NOTEBOOK[n] for n, _ in found if n in NOTEBOOK}
    assert _patsy_ok(formula, names)
    for name, certain in found:
        if certain:  # a called name cannot be a column: without it patsy fails
            assert not _patsy_ok(formula, {k: v for k, v in names.items() if k != name}), name


def test_patsy_reads_split_called_names_from_possible_columns() -> None:
    found = dict(formula_reads("y ~ np.log(x) + double_it(x) + I(x ** power) + C(g)"))
    assert found == {
        "y": False, "np": True, "x": False, "double_it": True, "power": False, "g": False
    }


@pytest.mark.parametrize("formula", ["y ~ np.log(x) + double_it(x)", "y ~ I(x ** power) + C(g)"])
def test_formulaic_reads_are_what_formulaic_needs(formula: str) -> None:
    found = formula_reads(formula, "formulaic")
    names = {n: NOTEBOOK[n] for n, _ in found if n in NOTEBOOK}
    model_matrix(formula, DATA, context=names)
    assert "np" not in dict(found)  # formulaic provides numpy itself
    assert dict(found).get("double_it", True) is True


def test_unparsable_formula_reads_nothing() -> None:
    assert formula_reads("y ~ ~ (", "patsy") == []


QUERIES = [
    ("x > @thr and y < @lim", ["thr", "lim"]),
    ("x > @thr & `weird col` != @thr", ["thr"]),
    ("z = x * @k\nw = z + @f(x)", ["k", "f"]),
    ("x in @values", ["values"]),
    ("x > 3", []),
]


@pytest.mark.parametrize(("text", "expected"), QUERIES)
def test_dataframe_expression_at_names_are_what_pandas_needs(
    text: str, expected: list[str]
) -> None:
    found = expression_reads(text)
    assert found is not None and [n for n, _ in found] == expected
    assert all(certain for _, certain in found)
    frame = DATA.assign(**{"weird col": 1.0})
    scope = {"frame": frame, "thr": 2, "lim": 6, "k": 3, "f": double_it, "values": [1.0, 2.0]}
    method = "eval" if "=" in text.replace("==", "").replace("!=", "") else "query"
    namespace = {**{n: scope[n] for n, _ in found}, "frame": frame}
    exec(f"result = frame.{method}({text!r})", namespace)  # pandas resolves @names here
    if expected:
        without = {k: v for k, v in namespace.items() if k != expected[0]}
        with pytest.raises(Exception, match=expected[0]):
            exec(f"result = frame.{method}({text!r})", without)


def test_pd_eval_reads_every_free_name() -> None:
    found = expression_reads("total = a + b * sin(c)", top_level=True)
    assert found == [("a", True), ("b", True), ("c", True)]


def test_sql_text_is_not_a_pandas_expression() -> None:
    assert expression_reads("SELECT * FROM t WHERE x = @thr") is None


def _call(code: str) -> ast.Call:
    node = ast.parse(code, mode="eval").body
    assert isinstance(node, ast.Call)
    return node


def test_call_reads_recognises_formula_functions() -> None:
    for code in ('smf.ols("y ~ np.log(x)", df)', 'sm.formula.logit(formula="y ~ np.log(x)")',
                 'sm.OLS.from_formula("y ~ np.log(x)", df)', 'dmatrix("np.log(x)", df)',
                 'ols("y ~ np.log(x)", df)', 'mixedlm("y ~ x", df, re_formula="~np.log(x)")'):
        found = call_reads(_call(code))
        assert found is not None, code
        reads, notes = found
        assert ("np", True) in [(r.name, r.certain) for r in reads] and notes == [], code


def test_call_reads_leaves_other_calls_alone() -> None:
    assert call_reads(_call('ols("not a formula")')) is None  # a bare name without "~"
    assert call_reads(_call("print(x)")) is None
    assert call_reads(_call("model.eval()")) is None
    assert call_reads(_call('client.query("SELECT a FROM t WHERE b = @p")')) is None
    assert call_reads(_call("session.query(User)")) is None


def test_formula_built_at_run_time_is_a_note_naming_the_call() -> None:
    found = call_reads(_call('smf.ols("y ~ " + term, data=df)'))
    assert found is not None
    reads, notes = found
    assert reads == [] and [n.call for n in notes] == ["smf.ols(...)"]
    assert "built at run time" in notes[0].reason
    found = call_reads(_call('df.query(f"x > @{name}")'))
    assert found is not None and found[1][0].call == "df.query(...)"
    assert call_reads(_call('df.query(f"x > {thr}")')) is None  # the value is inlined


def test_missing_library_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from kale_py import string_reads

    string_reads._formula_reads.cache_clear()
    monkeypatch.setitem(sys.modules, "patsy", None)
    found = call_reads(_call('patsy.dmatrix("np.log(x) + other(x)", df)'))
    # statsmodels also runs its formulas with formulaic: its parser stands in
    with_formulaic = call_reads(_call('smf.ols("y ~ np.log(x) + other(x)", df)'))
    monkeypatch.setitem(sys.modules, "formulaic", None)
    string_reads._formula_reads.cache_clear()
    neither = call_reads(_call('smf.ols("y ~ np.log(x) + other(x)", df)'))
    string_reads._formula_reads.cache_clear()
    assert found is not None and neither is not None and with_formulaic is not None
    for reads, notes in (found, neither):
        assert reads == [] and "patsy is not installed" in notes[0].reason
        assert notes[0].reason.endswith("pip install patsy")
    assert ("other", True) in [(r.name, r.certain) for r in with_formulaic[0]]
    assert with_formulaic[1] == []


def test_analysis_counts_formula_names_as_reads_at_the_call() -> None:
    a = analyse_source(
        "power = 2\n"
        'fit = smf.ols(\n    "y ~ np.log(x) + double_it(x) + I(x ** power)", data=df\n)\n'
        'small = df.query("x > @thr")\n'
    )
    lines = {u.name: u.line for u in a.free}
    assert lines["np"] == 3 and lines["double_it"] == 3 and lines["thr"] == 5
    assert "power" not in lines  # bound before the call in the same cell
    assert {"x", "y"} <= a.maybe_free and not {"np", "double_it", "thr"} & a.maybe_free


def test_function_body_formula_names_are_charged_to_callers() -> None:
    a = analyse_source('def fit(frame):\n    return smf.ols("y ~ helper(x)", frame)\n')
    assert "helper" in a.functions["fit"].globals_read
    assert "x" not in a.functions["fit"].globals_read  # maybe a column: not charged


def test_the_analysis_hands_every_callee_over() -> None:
    from kale_py import string_reads
    from kale_py.analysis import _STRING_CALLEES

    assert string_reads.CALLEES == _STRING_CALLEES


def test_notebooks_without_formulas_do_not_import_the_libraries() -> None:
    code = (
        "import sys\nfrom kale_py.analysis import analyse_source\n"
        "analyse_source('df = load()\\nq = df.query(\"x > @t\")\\nm = fit(df)\\n')\n"
        "print('patsy' in sys.modules, 'formulaic' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "False"]


def test_a_name_bound_to_a_formula_model_carries_what_the_formula_reads() -> None:
    a = analyse_source(
        'fit = smf.ols("y ~ widen(x) + I(x * power)", data=df).fit()\n'
        "summary = fit.summary()\n"
        "fit2 = fit\n"
    )
    assert dict(a.carries["fit"]) == {"y": False, "widen": True, "x": False, "power": False}
    assert "summary" not in a.carries and a.carries["fit2"] == a.carries["fit"]
    chained = analyse_source('model = smf.ols("y ~ widen(x)", data=df)\nres = model.fit()\n')
    assert dict(chained.carries["res"]) == {"y": False, "widen": True, "x": False}
    rebound = analyse_source('fit = smf.ols("y ~ widen(x)", data=df).fit()\nfit = 1\n')
    assert "fit" not in rebound.carries


def test_design_objects_and_classes_are_not_runtime_strings() -> None:
    assert call_reads(_call("patsy.dmatrix(design_info, new)")) is None
    assert call_reads(_call("Formula(expression)")) is None  # not formulaic's for sure
    found = call_reads(_call("sm.OLS.from_formula(formula, df)"))
    assert found is not None and found[1][0].call == "sm.OLS.from_formula(...)"
    found = call_reads(_call('patsy.dmatrix("np.log(x) + " + extra, df)'))
    assert found is not None and "built at run time" in found[1][0].reason
