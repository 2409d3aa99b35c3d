"""The package installs as a wheel (non-editable) with its modalities, recipes and model configs."""

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = config["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    # a subpackage of a mapped folder that is itself mapped elsewhere is counted once
    assert found == listed


@pytest.mark.slow
def test_wheel_contains_recipes_and_runs_outside_the_source_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("omniclip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("omniclip/recipes/train.yaml", "omniclip/recipes/debug/default.yaml",
                     "omniclip/modalities/pointcloud/tokenizers.py", "omniclip/model_configs/omniclip-tiny.json"):
        assert expected in names
    assert not any(n.startswith("modalities/") for n in names), "a top-level `modalities` package leaked"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = (
        "import omniclip, omniclip.modalities.pointcloud.ops as ops;"
        "assert omniclip.__file__.startswith(%r), omniclip.__file__;"
        "from hydra import compose, initialize_config_module;"
        "initialize_config_module('omniclip.recipes', version_base='1.3').__enter__();"
        "cfg = compose('zeroshot', ['eval=none', 'checkpoint=x']);"
        "print(cfg.checkpoint, len(cfg.eval.tasks))"
    ) % str(target)
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "x 0"
