"""The README's Python example runs as written, and its commands exist."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs(capsys):
    (example,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert re.fullmatch(r"\['(chair|table|airplane)', '(chair|table|airplane)'\]", printed)


def test_readme_commands_are_installed_scripts_or_files():
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    commands = re.findall(r"^(omniclip-[a-z]+)\b", README, flags=re.M)
    assert commands and set(commands) <= scripts
    for tool in re.findall(r"python (tools/\S+\.py)", README):
        assert (ROOT / tool).is_file(), tool
    for experiment in re.findall(r"experiment=([\w/]+)", README):
        assert (ROOT / "recipes" / "experiment" / f"{experiment}.yaml").is_file(), experiment
