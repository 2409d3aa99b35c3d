"""What the console commands print and how they exit: --help, misspelled options, every dataset
checked before the backbone loads, one-line errors, Ctrl-C, and no dependency chatter.

The commands run as subprocesses where the exit status, stderr or a signal is the point (the toy
modality registered first, as tests/conftest.py does in process); the rest runs in process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from omniclip import cli, train, zeroshot
from omniclip.data import TooManySkippedError
from omniclip.errors import ConfigError, SampleError
from tests.test_cli import TEST_RECIPES, compose_train

ROOT = Path(__file__).parents[1]
EXPERIMENTS = sorted(str(p.relative_to(ROOT / "recipes" / "experiment").with_suffix(""))
                     for p in (ROOT / "recipes" / "experiment").rglob("*.yaml"))
OPTIONS = {group: sorted(str(p.relative_to(ROOT / "recipes" / group).with_suffix(""))
                         for p in (ROOT / "recipes" / group).rglob("*.yaml")) for group in ("modality", "eval")}
NO_BACKBONE = "backbone.name=no-such-clip"  # loading it raises: an error naming data proves data came first


def run_command(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
                **popen) -> subprocess.CompletedProcess:
    """``omniclip.<module>.main()`` as its console script runs it, with the toy modality registered."""
    code = ("from omniclip import registry; from tests.toy_modality import ToyModality; "
            "registry.register('modality', 'toy', ToyModality); "
            f"from omniclip.{module} import main; main()")
    popen.setdefault("cwd", ROOT)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(env), **popen)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "OMNICLIP_DATA")}
    return {**env, "HF_HUB_OFFLINE": "1", **(extra or {})}


def train_args(tmp_path: Path, *overrides: str) -> list[str]:
    return [TEST_RECIPES, "modality=toy", "data=toy", "debug=default", f"output_dir={tmp_path / 'run'}",
            f"anchors.cache_dir={tmp_path / 'anchors'}", *overrides]


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [expected], proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ --help
@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("train", ["usage: omniclip-train [experiment=NAME]", "Train a lens into a frozen CLIP ViT",
                   "experiments (experiment=NAME):", *(f"\n  {e}\n" for e in EXPERIMENTS),
                   f"  modality  [required]  {', '.join(OPTIONS['modality'])}", "trainer.max_steps=10000",
                   "  model     [set by the experiment]  ila, vificlip, vificlip_bridge_prompt",
                   "trainer.bad_samples=stop", "$OMNICLIP_DATA", "--debug", "--verbose"]),
        ("zeroshot", ["usage: omniclip-zeroshot [GROUP=OPTION ...]", "Zero-shot classification and retrieval",
                      "  eval  [required]  audiocaps, audioset, clotho, esc50,", *OPTIONS["eval"],
                      "checkpoint=required", "bad_samples=stop", "eval.tasks.NAME.dataset.root=PATH"]),
        ("anchors", ["usage: omniclip-anchors [experiment=NAME]", "Fill the anchor cache for a training recipe",
                     *(f"\n  {e}\n" for e in EXPERIMENTS), "trainer.batch_size=32"]),
    ],
)
def test_help_says_what_the_command_does_and_lists_experiments_and_keys(module, expected, monkeypatch, capsys):
    import importlib

    monkeypatch.setattr(sys, "argv", [f"omniclip-{module}", "--help"])
    importlib.import_module(f"omniclip.{module}").main()  # returns: hydra is never reached
    out, err = capsys.readouterr()
    for text in expected:
        assert text in out, (text, out)
    assert err == ""
    assert "pointcloud/vitlens_l_shapenet" in EXPERIMENTS and "pointcloud" in OPTIONS["modality"]


def test_help_of_the_installed_console_script(tmp_path):
    script = Path(sys.executable).parent / "omniclip-train"
    if not script.is_file():
        pytest.skip("console scripts not installed next to this interpreter")
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: omniclip-train ") and "pointcloud/vitlens_l_shapenet" in proc.stdout
    assert not (tmp_path / "outputs").exists() and list(tmp_path.iterdir()) == []  # help writes nothing


@pytest.mark.parametrize("argv", [["--help"], ["-h"]])
def test_argparse_commands_help(argv, capsys, monkeypatch):
    from omniclip import convert
    from omniclip.demo import run as demo

    for module in (convert, demo):  # leave this process's logging as it is
        monkeypatch.setattr(module, "quiet_dependencies", lambda verbose=False: None)

    for main, prog in ((convert.main, "omniclip-convert"), (demo.main, "omniclip-demo")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: " + prog in out and "--verbose" in out


# ------------------------------------------------------------------------------ unknown options
def test_misspelled_experiment_fails_naming_the_closest(tmp_path):
    proc = run_command("train", "experiment=pointcloud/vitlens_l_shapent", "debug=default")
    assert_one_line_error(
        proc,
        "omniclip-train: error: config `experiment`: unknown experiment `pointcloud/vitlens_l_shapent` "
        "(closest: pointcloud/vitlens_l_shapenet, pointcloud/vitlens_bigg_openshape, "
        f"pointcloud/vitlens_l_objaverse) (known: {', '.join(EXPERIMENTS)})")
    assert proc.stdout == ""  # failed before anything loaded or logged


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=audio/vitlens_l_audiost"],
         "config `experiment`: unknown experiment `audio/vitlens_l_audiost` (closest: audio/vitlens_l_audioset, "
         "audio/vitlens_l_audioset_vggsound, audio/vitlens_instructblip) (known: "),
        (["+experiment=nope", "debug=default"], "config `experiment`: unknown experiment `nope` (known: "),
        (["experiment=pointcloud/vitlens_l_shapenet", "debug=defualt"],
         "config `debug`: unknown debug `defualt` (closest: default) (known: default)"),
        (["modality=pointcloud", "data=ulip_shapenett"],
         "config `data`: unknown data `ulip_shapenett` (closest: ulip_shapenet)"),
        ([TEST_RECIPES, "modality=toy", "data=toi"], "config `data`: unknown data `toi` (closest: toy)"),
        (["data=ulip_shapenet"], "config `modality`: not set: pass experiment=NAME or modality=OPTION "
                                 "(options: audio, pointcloud, pointcloud_pnsa"),
        (["-m", "experiment=pointcloud/vitlens_l_shapenet,pointcloud/vitlens_l_objavers"],  # a sweep
         "config `experiment`: unknown experiment `pointcloud/vitlens_l_objavers` (closest: "
         "pointcloud/vitlens_l_objaverse,"),
    ],
)
def test_unknown_group_option_is_refused_before_composing(overrides, message):
    with pytest.raises(ConfigError) as info:
        cli.check_group_choices("train", overrides)
    assert str(info.value).startswith(message), str(info.value)


def test_known_options_and_search_path_options_pass():
    cli.check_group_choices("train", ["experiment=pointcloud/vitlens_l_shapenet", "debug=default", "eval=esc50"])
    cli.check_group_choices("train", [TEST_RECIPES, "modality=toy", "data=toy", "eval=toy", "trainer.lr=1"])
    cli.check_group_choices("zeroshot", ["eval=modelnet40", "checkpoint=x"])
    # hydra's own flags are set aside as hydra's parser does; a sweep counts as a choice
    cli.check_group_choices("train", ["--cfg", "job", "experiment=pointcloud/vitlens_l_shapenet", "debug=default"])
    cli.check_group_choices("train", ["-m", "experiment=audio/vitlens_l_audioset,pointcloud/vitlens_l_objaverse"])


def test_recipe_composition_itself_refuses_an_unknown_experiment():
    """Not only the command line: the compose API (notebooks, tests) no longer skips it either."""
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        with pytest.raises(MissingConfigException, match="experiment/pointcloud/vitlens_l_shapent"):
            compose("train", ["experiment=pointcloud/vitlens_l_shapent", "debug=default"])
        with pytest.raises(MissingConfigException, match="debug/defualt"):
            compose("train", ["experiment=pointcloud/vitlens_l_shapenet", "debug=defualt"])


# -------------------------------------------------------------------- data before the backbone
@pytest.mark.parametrize(
    ("override", "key"),
    [("+data.train.root=/no/such/train", "data.train.root"),
     ("+eval.tasks.toy.dataset.root=/no/such/eval", "eval.tasks.toy.dataset.root")],
)
def test_every_dataset_is_checked_before_the_backbone_loads(tmp_path, override, key):
    cfg = compose_train(tmp_path, "eval=toy", NO_BACKBONE, override)
    folder = override.rsplit("=", 1)[1]
    with pytest.raises(ConfigError, match=f"^config `{key}`: folder {folder} does not exist$"):
        train.build_trainer(cfg)
    # and with the data fixed, the backbone is what fails: it really would have loaded
    with pytest.raises(ConfigError, match="^config `backbone.name`: unknown open_clip model `no-such-clip`"):
        train.build_trainer(compose_train(tmp_path, "eval=toy", NO_BACKBONE))


def _lens_export(tmp_path: Path, tiny_backbone, backbone_name: str) -> Path:
    """A toy lens export whose config names ``backbone_name`` (loading it would fail if bogus)."""
    from omniclip.model import build_lens_model

    model, model_cfg = build_lens_model("toy", tiny_backbone.trunk(), {"dim": 24, "num_points": 10}, {},
                                        tiny_backbone.name)
    model_cfg.update(trunk={}, backbone={"name": backbone_name, "pretrained": None})
    model.save_lens(tmp_path / "lens", model_cfg)
    return tmp_path / "lens"


def test_zeroshot_checks_its_datasets_before_loading_the_checkpoint(tmp_path, tiny_backbone):
    lens = _lens_export(tmp_path, tiny_backbone, "no-such-clip")
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("zeroshot", [TEST_RECIPES, "eval=toy", f"checkpoint={lens}", "num_workers=0",
                                   f"anchors.cache_dir={tmp_path / 'anchors'}",
                                   "+eval.tasks.toy.dataset.root=/no/such/eval"])
    with pytest.raises(ConfigError, match="^config `eval.tasks.toy.dataset.root`: folder /no/such/eval does not"):
        zeroshot.run(cfg)
    with pytest.raises(ConfigError, match=r"^config `checkpoint`: /no/such/lens: folder does not exist"):
        zeroshot.run(OmegaConf.merge(cfg, {"checkpoint": "/no/such/lens"}))


def test_anchors_command_checks_every_dataset_before_the_backbone(tmp_path):
    proc = run_command("anchors", *train_args(tmp_path, "eval=toy", NO_BACKBONE,
                                              "+eval.tasks.toy.dataset.root=/no/such/eval"),
                       env={"OMNICLIP_DATA": "/data/here"})
    assert_one_line_error(
        proc,
        "omniclip-anchors: error: config `eval.tasks.toy.dataset.root`: folder /no/such/eval does not exist; "
        "datasets are looked up under $OMNICLIP_DATA (now /data/here); set "
        "eval.tasks.toy.dataset.root=/path/to/toy")


def test_eval_datasets_are_built_once_not_at_every_evaluation(tmp_path, monkeypatch):
    from omniclip import recipe

    built = []
    original = recipe.build_dataset
    monkeypatch.setattr(recipe, "build_dataset", lambda *a, **k: built.append(a[3]) or original(*a, **k))
    trainer, _, _ = train.build_trainer(compose_train(tmp_path, "eval=toy"))
    assert built == ["data.train", "eval.tasks.toy.dataset"]  # before the backbone, once each
    trainer.fit()  # evaluates at steps 2 and 4
    assert built == ["data.train", "eval.tasks.toy.dataset"]


# ------------------------------------------------------------------------------ one-line errors
def test_config_error_is_one_line_with_the_fix(tmp_path):
    proc = run_command("train", *train_args(tmp_path, "+data.train.root=/no/such/dir"))
    assert_one_line_error(
        proc,
        "omniclip-train: error: config `data.train.root`: folder /no/such/dir does not exist; datasets are "
        "looked up under $OMNICLIP_DATA (unset: data/); set data.train.root=/path/to/dataset")
    assert "INFO" not in proc.stdout and "pretrained" not in proc.stdout  # no backbone was built


def test_override_that_does_not_compose_is_one_line(tmp_path):
    proc = run_command("train", *train_args(tmp_path, "trainer.bogus=1"))
    assert_one_line_error(proc, "omniclip-train: error: Could not override 'trainer.bogus'. To append to your "
                                "config use +trainer.bogus=1 (Key 'bogus' is not in struct)")
    assert "HYDRA_FULL_ERROR" not in proc.stderr


def test_missing_weights_offline_is_one_line(tmp_path):
    proc = run_command("train", *train_args(tmp_path, "backbone=vit_b16"),
                       env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith("omniclip-train: error: the weights `ViT-B-16` / `datacomp_xl_s13b_b90k` are not in "
                           "the local cache and huggingface.co cannot be reached (offline).")
    assert line.endswith("then pass its path as the backbone's weights: backbone.pretrained=/path/to/file "
                         "(omniclip-train), backbone_pretrained=/path/to/file (omniclip-zeroshot) or "
                         "--set pretrained=/path/to/file (omniclip-convert).")
    assert "Traceback" not in proc.stdout + proc.stderr and "Parsing model identifier" not in proc.stdout


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run_command("train", *train_args(tmp_path, "+data.train.root=/no/such/dir"), "--debug")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "omniclip.errors.ConfigError: config `data.train.root`: folder /no/such/dir does not exist" in proc.stderr


def test_hydra_full_error_means_debugging(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert not cli._debugging(False) and cli._debugging(True)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert cli._debugging(False)


def test_bad_file_in_a_worker_is_one_line_naming_file_and_skip_policy(tmp_path):
    bad = ",".join(map(str, range(16)))  # every sample of the debug-limited toy set
    proc = run_command("train", *train_args(tmp_path, f"+data.train.bad=[{bad}]", "trainer.num_workers=2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    prefix, sample = "omniclip-train: error: toy/", ".bin: corrupt on purpose; set trainer.bad_samples=skip " \
                                                   "to skip unusable files and count them"
    assert lines[0].startswith(prefix) and lines[0].endswith(sample), lines[0]
    assert int(lines[0][len(prefix):-len(sample)]) in range(16)


def test_too_many_skipped_files_is_one_line(tmp_path):
    import re

    proc = run_command("train", *train_args(tmp_path, "+data.train.bad=[0,1,2,3]", "trainer.bad_samples=skip",
                                            "trainer.max_skip_fraction=0.01"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert re.fullmatch(r"omniclip-train: error: \d+ of \d+ samples were skipped, more than max_skip_fraction=0\.01; "
                        r"first: (toy/[0-3]\.bin: corrupt on purpose; )+the data looks broken, not single files: "
                        r"check it \(tools/prepare_\*\.py\), or raise trainer\.max_skip_fraction", line), line


def test_required_key_left_unset_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "quiet_dependencies", lambda verbose=False: None)  # leave this process's logging
    task = cli._task("omniclip-zeroshot", zeroshot.run, None, verbose=False, debug=False)
    with pytest.raises(SystemExit) as exit_info:
        task(OmegaConf.create({"checkpoint": "???", "device": "cpu", "eval": {"tasks": {"x": {}}}}))
    assert exit_info.value.code == cli.EXIT_ERROR
    assert capsys.readouterr().err == "omniclip-zeroshot: error: config `checkpoint`: required: pass checkpoint=...\n"


@pytest.mark.parametrize(
    ("error", "cfg", "line"),
    [
        (TooManySkippedError("9 of 20 samples were skipped, more than max_skip_fraction=0.1; first: a: b"),
         {"trainer": {}},
         "omniclip-train: error: 9 of 20 samples were skipped, more than max_skip_fraction=0.1; first: a: b; the "
         "data looks broken, not single files: check it (tools/prepare_*.py), or raise trainer.max_skip_fraction"),
        (ConfigError("data.train.root", "folder data/shapenet-55 does not exist"),
         {"trainer": {}, "data": {"train": {"name": "ulip_shapenet"}}},
         "omniclip-train: error: config `data.train.root`: folder data/shapenet-55 does not exist; datasets are "
         "looked up under $OMNICLIP_DATA (unset: data/); set data.train.root=/path/to/ulip_shapenet, or prepare "
         "it with python tools/prepare_ulip.py"),
        (ConfigError("data.train.root", "folder data/kinetics400 does not exist"),  # a format's name: `list`
         {"trainer": {}, "data": {"train": {"name": "list", "root": "data/kinetics400"}}},
         "omniclip-train: error: config `data.train.root`: folder data/kinetics400 does not exist; datasets are "
         "looked up under $OMNICLIP_DATA (unset: data/); set data.train.root=/path/to/kinetics400, or prepare "
         "it with python tools/prepare_kinetics.py"),
        (SampleError("a.wav", "silent"), {"checkpoint": "x"},
         "omniclip-train: error: a.wav: silent; set bad_samples=skip to skip unusable files and count them"),
        (ConfigError("trainer.resume", "cannot resume:\n  lens.depth 2 -> 3\n  trainer.seed 0 -> 1"), {"trainer": {}},
         "omniclip-train: error: config `trainer.resume`: cannot resume: lens.depth 2 -> 3 trainer.seed 0 -> 1"),
    ],
)
def test_error_lines_and_hints(error, cfg, line, monkeypatch):
    monkeypatch.delenv("OMNICLIP_DATA", raising=False)
    assert cli.one_line_error("omniclip-train", error, OmegaConf.create(cfg)) == line


# ------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    code = ("from omniclip import registry; from tests.toy_modality import ToyModality; "
            "registry.register('modality', 'toy', ToyModality); from omniclip.train import main; main()")
    args = train_args(tmp_path, "trainer.max_steps=100000", "trainer.checkpoint_every=100000")
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # training has started once a step is logged
            if "step 2/" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("omniclip-train: interrupted"), err


def test_keyboard_interrupt_before_training_is_one_line(monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "check_group_choices", lambda *a: interrupted(None))
    monkeypatch.setattr(sys, "argv", ["omniclip-train", "x=1"])
    with pytest.raises(SystemExit) as exit_info:
        cli.hydra_entry("train", train.run)()
    assert exit_info.value.code == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "omniclip-train: interrupted\n"


# ------------------------------------------------------------- errors surviving DataLoader workers
class _Failing(Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            raise OSError("the cause")
        except OSError as cause:  # chained, as datasets raise them
            raise self.error from cause


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (SampleError("data/a b.ply", "bad header: `element vertex -1`"),
         {"path": "data/a b.ply", "problem": "bad header: `element vertex -1`"}),
        (ConfigError("root", "folder /x\ndoes not exist"), {"key": "root", "problem": "folder /x\ndoes not exist"}),
        (TooManySkippedError("3 of 4 samples were skipped"), {}),
    ],
)
def test_omniclip_errors_keep_type_and_message_across_workers(error, fields):
    with pytest.raises(type(error)) as info:
        next(iter(DataLoader(_Failing(error), num_workers=1)))
    assert type(info.value) is type(error) and str(info.value) == str(error)
    for name, value in fields.items():
        assert getattr(info.value, name) == value
    assert "Caught" in info.value.__notes__[0] and "the cause" in info.value.__notes__[0]  # for --debug


def test_structured_errors_still_take_their_fields():
    assert str(SampleError("x.wav", "empty")) == "x.wav: empty" and SampleError("x.wav", "e").path == "x.wav"
    assert str(ConfigError("k", "bad")) == "config `k`: bad" and not hasattr(ConfigError("k", "bad"), "__notes__")


# ---------------------------------------------------------------------------- misleading messages
def test_unknown_modality_lists_built_ins_not_yet_imported():
    code = ("from omniclip.modality import get_modality\ntry:\n    get_modality('pointclod')\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=_env())
    built_ins = sorted(p.parent.name for p in (ROOT / "modalities").glob("*/__init__.py"))
    assert "pointcloud" in built_ins and "audio" in built_ins
    assert proc.stdout.strip() == ("ConfigError config `modality`: unknown modality `pointclod` "
                                   f"(closest: pointcloud) (known: {', '.join(built_ins)})"), proc.stderr[-2000:]


def test_schedule_error_names_the_trainer_keys(tmp_path):
    cfg = compose_train(tmp_path, "trainer.max_steps=3", "trainer.warmup_steps=3")
    with pytest.raises(ConfigError, match=r"^config `trainer.max_steps`: must exceed `warmup_steps` \(3\), got 3: "
                                          r"raise `max_steps` or lower `warmup_steps`$"):
        train.build_trainer(cfg)


# ------------------------------------------------------------------------- dependency chatter
def _record(name: str, level: int, pathname: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, "message", None, None)


def test_dependency_filter_keeps_own_lines_and_dependency_errors():
    import open_clip

    dependency = str(Path(open_clip.__file__).parent / "factory.py")
    keep = cli.DependencyFilter().filter
    assert not keep(_record("root", logging.INFO, dependency))  # open_clip logs through the root logger
    assert not keep(_record("root", logging.WARNING, dependency))  # "No pretrained weights loaded ..."
    assert not keep(_record("hydra.core.utils", logging.INFO, "/x/hydra/core/utils.py"))
    assert keep(_record("root", logging.ERROR, dependency))
    assert keep(_record("omniclip.trainer", logging.INFO, str(ROOT / "omniclip" / "trainer.py")))
    assert keep(_record("omniclip.modalities.audio.io", logging.INFO, "/anywhere/io.py"))


def test_verbose_removes_the_filter(monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "warning")  # kept: a user's setting wins
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    transformers_level = logging.getLogger("transformers").level
    try:
        cli.quiet_dependencies(verbose=False)
        cli.quiet_dependencies(verbose=False)
        assert sum(isinstance(f, cli.DependencyFilter) for f in handler.filters) == 1
        cli.quiet_dependencies(verbose=True)
        assert not any(isinstance(f, cli.DependencyFilter) for f in handler.filters)
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "warning"
    finally:
        root.removeHandler(handler)
        for other in root.handlers:  # the ones pytest attached
            for f in [f for f in other.filters if isinstance(f, cli.DependencyFilter)]:
                other.removeFilter(f)
        logging.getLogger("transformers").setLevel(transformers_level)


def test_zeroshot_output_is_the_table_and_leaves_no_log_file_behind(tmp_path, tiny_backbone):
    lens = _lens_export(tmp_path, tiny_backbone, "omniclip-tiny")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = run_command("zeroshot", TEST_RECIPES, "eval=toy", f"checkpoint={lens}", "num_workers=0",
                       f"anchors.cache_dir={tmp_path / 'anchors'}", cwd=workdir,
                       env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["dataset", "task", "model", "N", "top1", "top5", "mean_per_class_recall"]
    assert lines[-1] == f"results written to {lens / 'zeroshot.json'}" and len(lines) == 4
    assert list(workdir.iterdir()) == []  # no zeroshot.log, no outputs/ folder


def test_demo_prints_no_dependency_warning(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "omniclip.demo.run", "--quick", "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stderr holds the progress bars only; it was: "WARNING:root:No pretrained weights loaded for model ..." twice
    assert "WARNING" not in proc.stderr and "pretrained weights" not in proc.stderr
    assert "tiny CLIP pretraining" in proc.stderr and "lens vit (" in proc.stderr
    assert "| chance |" in proc.stdout and json.loads((tmp_path / "out" / "results.json").read_text())


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["data.train.num_points=12", "data.train.min_points=8"], "data.train.num_points"),
     (["eval=modelnet40", "eval.tasks.modelnet40.dataset.num_points=12", "eval.tasks.modelnet40.dataset.min_points=8"],
      "eval.tasks.modelnet40.dataset.num_points")],
)
def test_clouds_too_small_for_the_tokenizer_fail_before_the_backbone(tmp_path, overrides, key):
    from tests.modalities.pointcloud.test_datasets import make_ulip_shapenet

    shapenet = make_ulip_shapenet(tmp_path / "shapenet-55")
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=pointcloud/vitlens_l_shapenet", "debug=default", NO_BACKBONE,
                                f"output_dir={tmp_path / 'run'}", f"data.train.root={shapenet}",
                                "modality.tokenizer.num_groups=16", "modality.tokenizer.group_size=8", *overrides])
    with pytest.raises(ConfigError) as info:
        train.build_trainer(cfg)
    assert str(info.value) == (f"config `{key}`: 12 points per cloud cannot make the tokenizer's groups "
                               "(modality.tokenizer.num_groups=16, group_size=8): set num_points >= 16")
