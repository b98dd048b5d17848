"""Verified state: nothing is unpickled before its bytes are proven to be its producer's.

A two-step notebook passes a dict and an array. Its saved state is then damaged the ways a
failing disk, a bad copy or someone else with write access to the folder would (a flipped
byte in the pickle stream or in an array buffer, a pickle that runs code, two variables'
files swapped, a truncated file, an edited manifest), in the cache and in a run's own state,
and the next runs must notice, say what and where, and end with the right values.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from test_local_runner import last_run, statuses, write_notebook

from kale_py import marshal
from kale_py.cli import main

EXPECTED = "RESULT 45 7999998000000"


def two_steps(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "nb.ipynb",
        [
            (["imports"], "import numpy as np"),
            (["step:one"], "d = {'n': 45}\narr = np.arange(4_000_000, dtype=np.int64)"),
            (["step:two", "prev:one"], "print('RESULT', d['n'], int(arr.sum()))"),
        ],
    )


class Evil:
    """Unpickling this runs a shell command: the marker file proves it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:  # in place: every hard link of the file sees it
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def _main_offset(path: Path) -> int:
    header_length = int.from_bytes(path.read_bytes()[12:16], "little")
    return 16 + header_length + 5


def flip_in_pickle(state: Path, marker: Path) -> None:
    _flip(state / "d.kpk", _main_offset(state / "d.kpk"))


def flip_in_buffer(state: Path, marker: Path) -> None:
    path = state / "arr.kpk"
    _flip(path, path.stat().st_size - 1000)


def replace_with_code(state: Path, marker: Path) -> None:
    crafted = state.parent / "crafted"
    marshal.save_variable("d", Evil(marker), crafted)
    os.replace(crafted / "d.kpk", state / "d.kpk")  # a valid file with fixed-up lengths


def swap_files(state: Path, marker: Path) -> None:
    os.replace(state / "d.kpk", state / "tmp")
    os.replace(state / "arr.kpk", state / "d.kpk")
    os.replace(state / "tmp", state / "arr.kpk")


def truncate(state: Path, marker: Path) -> None:
    path = state / "arr.kpk"
    os.truncate(path, path.stat().st_size // 2)


def edit_manifest(state: Path, marker: Path) -> None:
    """Replace a file, and fix the manifest's digest and size to match: no key, no match."""
    replace_with_code(state, marker)
    manifest_path = state / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["variables"]["d"]["hash"] = marshal.hash_file(state / "d.kpk")
    manifest["variables"]["d"]["bytes"] = (state / "d.kpk").stat().st_size
    manifest_path.unlink()  # a new file: the run's and the cache's links part ways
    manifest_path.write_text(json.dumps(manifest, indent=2))


TAMPERS = {
    "flipped byte in the pickle stream": (flip_in_pickle, "'d'"),
    "flipped byte in a buffer": (flip_in_buffer, "'arr'"),
    "replaced pickle that runs code": (replace_with_code, "'d'"),
    "two files swapped": (swap_files, "'(d|arr)'"),
    "truncated file": (truncate, "'arr'"),
    "edited manifest": (edit_manifest, "manifest|seal does not match"),
}


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main(["run", "--progress", "plain", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def two_log(notebook: Path) -> str:
    run_id = last_run(notebook)["run_id"]
    return (notebook.parent / ".nb2pipe" / "runs" / run_id / "logs" / "two.log").read_text()


def step_state(notebook: Path, step: str) -> Path:
    manifest = last_run(notebook)
    return notebook.parent / ".nb2pipe" / "runs" / manifest["run_id"] / "state" / step


def cache_state(notebook: Path, step: str) -> Path:
    key = last_run(notebook)["steps"][step]["cache_key"]
    return notebook.parent / ".nb2pipe" / "cache" / key / "state"


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_a_damaged_cache_entry_is_reported_evicted_and_recomputed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    tamper, variable = TAMPERS[kind]
    notebook = two_steps(tmp_path)
    marker = tmp_path / "pwned"
    assert run(capsys, notebook)[0] == 0
    tamper(cache_state(notebook, "one"), marker)

    code, out = run(capsys, notebook)

    assert code == 0, out
    assert not marker.exists()
    # one ran again; two's own outputs still stand (same derivation) and load one's values
    assert statuses(last_run(notebook)) == {"one": "succeeded", "two": "cached"}
    assert EXPECTED in two_log(notebook)
    warnings = [line for line in out.splitlines() if "cached outputs are damaged" in line]
    assert len(warnings) == 1, out
    assert warnings[0].startswith("⚠ one:") or warnings[0].startswith("warning: one:")
    assert re.search(variable, warnings[0])
    assert [f"⚠ {w}" for w in last_run(notebook)["steps"]["one"]["warnings"]] in (
        warnings, [w.replace("warning: ", "⚠ ") for w in warnings])
    code, out = run(capsys, notebook, "--no-cache")  # two really loads what one saved now
    assert code == 0, out
    assert EXPECTED in out
    # The entry was replaced by the recomputed one: the next run takes it, silently.
    code, out = run(capsys, notebook)
    assert (code, statuses(last_run(notebook))) == (0, {"one": "cached", "two": "cached"})
    assert "cached outputs are damaged" not in out


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_a_damaged_state_file_used_by_only_names_the_variable_and_the_step_to_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    tamper, variable = TAMPERS[kind]
    notebook = two_steps(tmp_path)
    marker = tmp_path / "pwned"
    assert run(capsys, notebook)[0] == 0
    tamper(step_state(notebook, "one"), marker)

    code, out = run(capsys, notebook, "--only", "two", "--no-cache")  # two loads one's state

    assert code == 1, out
    assert not marker.exists()
    assert re.search(variable, out)
    assert "re-run step 'one'" in out and "nb2pipe run --only one" in out
    assert "RESULT" not in out
    # The advice works: the producer runs again (its cache entry is checked too), then the
    # consumer gets the right values.
    code, out = run(capsys, notebook, "--only", "one")
    assert code == 0, out
    code, out = run(capsys, notebook, "--only", "two", "--no-cache")
    assert code == 0, out
    assert EXPECTED in out
    assert not marker.exists()


def test_state_written_by_someone_else_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder holding another user's runs (a shared volume, a committed .nb2pipe/):
    their manifests are signed with their key, not this user's."""
    notebook = two_steps(tmp_path)
    monkeypatch.setenv("NB2PIPE_KEY_FILE", str(tmp_path / "someone-else" / "key"))
    assert run(capsys, notebook)[0] == 0
    monkeypatch.setenv("NB2PIPE_KEY_FILE", str(tmp_path / "me" / "key"))

    code, out = run(capsys, notebook, "--only", "two")
    assert code == 1
    assert "written by someone else than this user's runs" in out
    code, out = run(capsys, notebook)
    assert code == 0, out
    assert EXPECTED in out
    assert "one: the cached outputs are damaged or not yours" in out


def test_the_key_is_made_private_outside_the_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NB2PIPE_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "project").mkdir()
    notebook = two_steps(tmp_path / "project")
    assert run(capsys, notebook)[0] == 0
    key = tmp_path / "config" / "kale_py" / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert not list((tmp_path / "project").rglob("key"))
    manifest = json.loads((step_state(notebook, "one") / "manifest.json").read_text())
    assert manifest["mac"].startswith("hmac-sha256:")


@pytest.mark.parametrize("damage", ["not a file", "shared with others", "not hex"])
def test_an_unreadable_key_is_an_error_saying_where_it_lives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    key = tmp_path / "cfg" / "key"
    key.parent.mkdir()
    if damage == "not a file":
        key.mkdir()  # unreadable as a key whoever runs the test (root reads any file)
    else:
        key.write_text("ab" * 32 if damage == "shared with others" else "this is not a key")
        key.chmod(0o644 if damage == "shared with others" else 0o600)
    monkeypatch.setenv("NB2PIPE_KEY_FILE", str(key))
    notebook = two_steps(tmp_path)

    code, out = run(capsys, notebook)

    assert code == 1
    assert f"the key that signs your run records lives at {key}" in out
    assert "NB505" in out
    assert "Traceback" not in out
    assert not (tmp_path / ".nb2pipe" / "runs").exists() or not any(
        (tmp_path / ".nb2pipe" / "runs").glob("2*"))


def test_verification_reads_the_file_once_and_accepts_both_algorithms(tmp_path: Path) -> None:
    """BLAKE3 is the default; a SHA-256 record (an image without blake3) still verifies."""
    data = pickle.dumps(list(range(10)))
    assert marshal.digest_buffer(data, "sha256-tree16m").startswith("sha256-tree16m:")
    record = marshal.save_variable("x", list(range(10)), tmp_path / "s")
    assert record.hash.startswith("blake3-tree16m:")
    path = tmp_path / "s" / "x.kpk"
    assert marshal.digest_buffer(path.read_bytes()) == record.hash == marshal.hash_file(path)
    sha = marshal.hash_file(path, "sha256-tree16m")
    from dataclasses import replace

    loaded = marshal.load_variable(replace(record, hash=sha), tmp_path / "s",
                                   allowed_root=tmp_path)
    assert loaded == list(range(10))


@pytest.mark.parametrize("read_ahead", ["sendfile", "no sendfile", "sendfile fails"])
def test_large_files_verify_block_by_block_however_they_are_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_ahead: str) -> None:
    """Files of several hash blocks (the last one partial) verify while they are read ahead,
    and the same when the read-ahead is missing or fails: a damaged last block is caught."""
    np = pytest.importorskip("numpy")
    sent: list[int] = []
    if read_ahead == "sendfile":
        sendfile = os.sendfile

        def counted(out: int, source: int, offset: int, count: int) -> int:
            sent.append(count)
            return sendfile(out, source, offset, count)
        monkeypatch.setattr(os, "sendfile", counted)
    elif read_ahead == "no sendfile":
        monkeypatch.delattr(os, "sendfile", raising=False)
    elif read_ahead == "sendfile fails":
        def refuse(*args: object) -> int:
            raise OSError(22, "Invalid argument")
        monkeypatch.setattr(os, "sendfile", refuse)
    array = np.arange(5_000_000, dtype=np.float64)  # 40 MB: 3 blocks, the last one partial
    state = tmp_path / "s"
    record = marshal.save_variable("big", array, state)
    path = state / record.file
    assert record.bytes > 2 * 16 * 1024 * 1024
    assert record.hash == marshal.hash_file(path) == marshal.digest_buffer(path.read_bytes())
    with open(path, "rb") as f:
        assert marshal.digest_buffer(path.read_bytes(), source=f.fileno()) == record.hash
    loaded = marshal.load_variable(record, state, allowed_root=tmp_path)
    assert np.array_equal(loaded, array)
    del loaded
    assert sum(sent) >= (2 * record.bytes if read_ahead == "sendfile" else 0)  # read ahead twice
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(data)
    with pytest.raises(marshal.StateError, match="digest mismatch"):
        marshal.load_variable(record, state, allowed_root=tmp_path)
    with pytest.raises(marshal.StateError, match="digest mismatch"):
        marshal.check_state(state, {"variables": {"big": marshal._entry(record)}},
                            allowed_root=tmp_path)
