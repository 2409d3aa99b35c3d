"""omniclip.paths: the one rule that keeps manifest paths and archive members inside their folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniclip.errors import ConfigError, SampleError
from omniclip.paths import archive_target, escape_problem, resolve_in_root


@pytest.mark.parametrize(("path", "problem"), [
    ("a/b.wav", None),
    ("a/../b.wav", None),  # climbs, but stays inside
    ("./a//b.wav", None),
    ("..", "path '..' climbs out of the folder with '..'"),
    ("a/../../b", "path 'a/../../b' climbs out of the folder with '..'"),
    ("..\\..\\evil", "path '..\\\\..\\\\evil' climbs out of the folder with '..'"),
    ("/etc/passwd", "path '/etc/passwd' is absolute"),
    ("\\\\server\\share", "path '\\\\\\\\server\\\\share' is absolute"),
    ("C:\\evil.txt", "path 'C:\\\\evil.txt' is absolute"),
    ("c:evil.txt", "path 'c:evil.txt' is absolute"),
    ("", "path '' is empty"),
    ("a\0b", "path 'a\\x00b' holds a NUL byte"),
    (None, "path is NoneType None, not a string"),
    (3, "path is int 3, not a string"),
    (["a"], "path is list ['a'], not a string"),
])
def test_escape_problem(path, problem):
    assert escape_problem(path) == problem


def test_resolve_in_root_errors_name_where_and_how_to_allow(tmp_path):
    assert resolve_in_root(tmp_path, "a/b.wav") == tmp_path / "a/b.wav"
    with pytest.raises(SampleError) as err:
        resolve_in_root(tmp_path, "../x.wav", where="manifest.jsonl entry 3")
    assert str(err.value) == ("manifest.jsonl entry 3: path '../x.wav' climbs out of the folder with '..': manifest "
                              f"paths must stay inside the dataset root {tmp_path} (set `allow_outside_root: true` "
                              "to read files outside it)")
    with pytest.raises(ConfigError) as err:
        resolve_in_root(tmp_path, "/x.wav", where="meta.csv line 2", key="meta")
    assert str(err.value).startswith("config `meta`: meta.csv line 2: path '/x.wav' is absolute: ")
    assert resolve_in_root(tmp_path, "/x.wav", allow_outside=True) == Path("/x.wav")
    assert resolve_in_root(tmp_path, "../x.wav", allow_outside=True) == tmp_path / "../x.wav"
    with pytest.raises(SampleError, match=r"path is NoneType None, not a string$"):
        resolve_in_root(tmp_path, None, allow_outside=True)


def test_archive_target(tmp_path):
    assert archive_target(tmp_path, "audio/./a.wav") == tmp_path / "audio/a.wav"
    assert archive_target(tmp_path, "audio\\b.wav") == tmp_path / "audio/b.wav"
    with pytest.raises(ValueError) as err:
        archive_target(tmp_path, "audio/../../evil.sh")
    assert str(err.value) == (f"archive member 'audio/../../evil.sh' would be written outside {tmp_path} "
                              "(path 'audio/../../evil.sh' climbs out of the folder with '..'); refusing the archive")


def test_allow_outside_still_refuses_what_is_no_path(tmp_path):
    for bad, problem in (("", "path '' is empty"), (7, "path is int 7, not a string")):
        with pytest.raises(SampleError) as err:
            resolve_in_root(tmp_path, bad, allow_outside=True, where="m.jsonl entry 1")
        assert err.value.problem == problem  # no "set allow_outside_root" hint: it would not help
