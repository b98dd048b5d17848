"""Which IPython magics a pipeline step can run (shared by the check and the runtime).

A step is a plain Python process, not a kernel: the runtime implements the magics that
matter in notebooks, skips the ones that only configure an interactive session, and the
check reports the rest before anything runs.
"""

from __future__ import annotations

#: line magics the runtime carries out
LINE_MAGICS = frozenset({"pip", "conda", "sx", "system", "cd", "env", "run", "time", "timeit",
                         "matplotlib"})
#: line magics that only configure an interactive session: skipped with a notice
SKIPPED_LINE_MAGICS = frozenset({
    "load_ext", "reload_ext", "autoreload", "aimport", "config", "who", "whos", "lsmagic",
    "precision", "xmode", "pdb", "store", "history", "notebook", "autosave", "colors", "magic",
    "page", "pinfo", "pinfo2", "psearch", "alias_magic", "pprint"})
#: cell magics whose body is Python; the runtime wraps the cell
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})
#: cell magics whose body is text for another program or an output format
TEXT_CELL_MAGICS = frozenset({"bash", "sh", "script", "writefile", "html", "markdown", "latex",
                              "svg", "javascript", "js"})
#: line magics whose effect stays inside the step that runs them
STEP_LOCAL_LINE_MAGICS = frozenset({"cd", "env"})


def magic_name(text: str) -> tuple[str, str]:
    """``("line"|"cell"|"shell", name)`` of a magic line as written (``%%bash``, ``x = %sx ls``)."""
    body = text.strip()
    if "=" in body and not body.startswith(("%", "!")):
        body = body.split("=", 1)[1].strip()
    if body.startswith("%%"):
        return "cell", body[2:].split(None, 1)[0] if body[2:].strip() else ""
    if body.startswith("%"):
        return "line", body[1:].split(None, 1)[0] if body[1:].strip() else ""
    return "shell", ""
