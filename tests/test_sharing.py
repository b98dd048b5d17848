"""May-share groups (kale_py.sharing) and what the graph makes of them.

Names whose values may share objects form a group; a step that may change an object
through one name of a group provides every name of it, and a group's names come from one
step, saved in one file, so that they arrive sharing their objects. The notebooks in
tests/notebooks/shared_*.ipynb run the same patterns by a kernel and as pipelines.
"""

from __future__ import annotations

import ast

import pytest

from kale_py.graph import Pipeline, build_pipeline
from kale_py.notebook import percent_script_to_notebook
from kale_py.sharing import INCOMING, ShareGroups, function_returns, module_shares


def shares(source: str, known: str = "") -> set[frozenset[str]]:
    returns = function_returns(ast.parse(known)) if known else None
    return set(module_shares(ast.parse(source), returns)[0])


@pytest.mark.parametrize(("source", "expected"), [
    ('clf_list = [(lr, "lr"), (gnb, "nb")]', {"clf_list", "lr", "gnb"}),
    ('models = {"rf": rf}', {"models", "rf"}),
    ("pipe = make_pipeline(scaler, clf)", {"pipe", "scaler", "clf"}),
    ("pipe = Pipeline([('s', scaler), ('c', clf)])", {"pipe", "scaler", "clf"}),
    ("ax = fig.axes[0]", {"ax", "fig"}),
    ("fig, ax = plt.subplots()", {"fig", "ax"}),
    ("head = arr[:10]", {"head", "arr"}),
    ("holder.model = m", {"holder", "m"}),
    ("models.append(m)", {"models", "m"}),
    ('models["rf"] = rf', {"models", "rf"}),
    ("setattr(holder, 'model', m)", {"holder", "m"}),
    ("best = max(models, key=score)", {"best", "models"}),
    ("firsts = [m for m in models]", {"firsts", "models"}),
    ("model = model_a if flag else model_b", {"model", "model_a", "model_b"}),
    ("est = grid.fit(X, y)", {"est", "grid"}),
    ("values = d.values()", {"values", "d"}),
    ("a = b = []", {"a", "b"}),
])
def test_what_may_share(source: str, expected: set[str]) -> None:
    assert frozenset(expected) in shares(source)


@pytest.mark.parametrize("source", [
    "X_train, X_test, y_train, y_test = train_test_split(X, y)",
    "subset = df[['a', 'b']]",
    "positive = df[df.a > 0]",
    "masked = arr[(arr > 0) & (arr < 5)]",
    "clean = df.dropna()",
    "n = len(models)",
    "rows = X.shape[0]",
    "squares = [x * x for x in xs]",
    "df = pd.read_csv(path)",
    "total = a + b",
    "copy_ = copy.deepcopy(model)",
    "predictions = model.predict(X)",
])
def test_what_does_not_share(source: str) -> None:
    assert shares(source) == set()


def test_calls_to_known_functions_share_what_they_return() -> None:
    known = "def score(model, X, y):\n    return round(float((model.predict(X) == y).mean()))\n" \
            "def wrap(model, name):\n    box = [model]\n    return box\n" \
            "def gen(items):\n    yield from items\n"
    assert shares("s = score(model, X, y)", known) == set()
    assert shares("w = wrap(model, name)", known) == {frozenset({"w", "model"})}
    assert shares("w = wrap(name=n, model=m)", known) == {frozenset({"w", "m"})}
    assert shares("g = gen(xs)", known) == {frozenset({"g", "xs"})}
    assert shares("u = unknown(model, X)") == {frozenset({"u", "model", "X"})}


def test_rebinding_at_the_top_ends_earlier_sharing() -> None:
    found, rebound = module_shares(ast.parse(
        "for v in first:\n    v.append(1)\nfor v in second:\n    pass\nw = [v]\n"))
    assert set(found) == {frozenset({"v", "second"}), frozenset({"w", "v"})}
    assert rebound == {"v", "w"}
    _, rebound = module_shares(ast.parse("if c:\n    v = x\nv += [1]\n"))
    assert rebound == frozenset()  # a conditional binding keeps what v may have shared


def test_share_groups_merge_and_split() -> None:
    groups = ShareGroups()
    groups.update((), [frozenset({"a", "b"}), frozenset({"c", "d"})])
    assert groups.token("a") == groups.token("b") != groups.token("c")
    groups.update((), [frozenset({"b", "c"})])
    assert len({groups.token(n) for n in "abcd"}) == 1
    assert groups.closure({"a"}, []) == {"a", "b", "c", "d"}
    assert groups.closure({"e"}, [frozenset({"e", "f"})]) == {"e", "f"}
    groups.update({"a", "b", "c"}, [])
    assert groups.token("d") is None and groups.closure({"d"}, []) == {"d"}


@pytest.mark.parametrize("order", [["x", "y"], ["y", "x"]])
def test_closure_follows_the_shares_of_every_member(order: list[str]) -> None:
    """A member reached through its group has its own new shares followed too, whatever
    the order of the names (a set's order changes from process to process)."""
    groups = ShareGroups()
    groups.update((), [frozenset({"x", "y"})])
    assert groups.closure(order, [frozenset({"y", "z"})]) == {"x", "y", "z"}
    assert groups.closure(order[:1], [frozenset({INCOMING + "y", "w"})]) >= {"x", "y", "w"}


def pipeline(*cells: str) -> Pipeline:
    cells = ("imports\nfrom library import make, split", *cells)
    text = "".join(f"# %% tags=[\"{tag}\"]\n{code}\n\n" for tag, code in
                   (cell.split("\n", 1) for cell in cells))
    built = build_pipeline(percent_script_to_notebook(text))
    assert built.ok, built.diagnostics
    return built


def test_changing_through_one_name_provides_the_whole_group() -> None:
    p = pipeline("step:data\nlr = make(); gnb = make(); X = 1",
                 'step:collect\nclf_list = [(lr, "lr"), (gnb, "nb")]',
                 "step:fit\nfor clf, name in clf_list:\n    clf.fit(X)",
                 "step:report\nprint(lr, gnb)")
    assert dict(p.io["fit"].loads) == {"X": "data", "clf_list": "collect", "gnb": "collect",
                                       "lr": "collect"}
    assert p.io["fit"].saves == ("gnb", "lr")
    assert dict(p.io["report"].loads) == {"gnb": "fit", "lr": "fit"}
    assert p.io["collect"].groups == (("clf_list", "gnb", "lr"),)
    assert p.io["fit"].groups == (("gnb", "lr"),)


def test_names_of_a_changed_group_come_from_one_step() -> None:
    """report changes lr, which clf_list holds: both must be the objects collect saved."""
    p = pipeline("step:data\nlr = make()",
                 "step:collect\nclf_list = [lr]",
                 "step:other\nunrelated = 1",
                 "step:change\nlr.fit()\nfirst = clf_list[0]",
                 "step:report\nprint(clf_list, first)")
    assert dict(p.io["change"].loads) == {"clf_list": "collect", "lr": "collect"}
    assert p.io["collect"].groups == (("clf_list", "lr"),)
    assert dict(p.io["report"].loads) == {"clf_list": "change", "first": "change"}


def test_a_step_that_only_reads_a_group_saves_nothing() -> None:
    p = pipeline("step:data\nmodel = make()\nmodels = {'m': model}",
                 "step:look\nn = len(models)\nname = str(model)",
                 "step:fit\nmodels['m'].fit()",
                 "step:use\nprint(model, n, name)")
    assert p.io["look"].saves == ("n", "name")
    assert dict(p.io["fit"].loads) == {"model": "data", "models": "data"}
    assert dict(p.io["use"].loads) == {"model": "fit", "n": "look", "name": "look"}


def test_rebinding_in_a_later_step_leaves_the_group() -> None:
    p = pipeline("step:data\nlr = make()\nclf_list = [lr]",
                 "step:fresh\nlr = make()",
                 "step:fit\nfor clf in clf_list:\n    clf.fit()",
                 "step:use\nprint(lr)")
    assert dict(p.io["use"].loads) == {"lr": "fresh"}
    assert "lr" not in p.io["fit"].writes


def test_parallel_branches_reading_shared_inputs_stay_parallel() -> None:
    p = pipeline("functions\ndef score(model, X):\n    return float(model.predict(X).mean())",
                 "step:prepare\nX_train, X_test = split()",
                 "step:linear\nlinear = make()\nlinear.fit(X_train)\n"
                 "linear_score = score(linear, X_test)",
                 "step:tree\ntree = make()\ntree.fit(X_train)\ntree_score = score(tree, X_test)",
                 "step:compare\nbest = max(linear_score, tree_score)")
    assert {(e.source, e.target) for e in p.edges} == {
        ("prepare", "linear"), ("prepare", "tree"), ("linear", "compare"), ("tree", "compare")}
    assert p.levels == (("prepare",), ("linear", "tree"), ("compare",))
