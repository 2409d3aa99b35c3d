"""Console entry points as hydra apps over the recipes shipped in ``omniclip.recipes``.

`hydra_entry` gives every recipe command the same behaviour around hydra:

- ``--help`` prints what the command does, the experiments, the config groups and the common
  keys (hydra's own ``--help`` would first compose the recipe, and fail on its ``???`` groups);
- a misspelled option of a config group (``experiment=pointcloud/vitlens_l_shapent``) fails at
  once, naming the closest options, before anything loads;
- omniclip's errors (config, data, weights, checkpoints; also raised in DataLoader workers) and
  hydra's composition errors print one line on stderr, what went wrong and how to fix it, and
  exit 2; ``--debug`` or ``HYDRA_FULL_ERROR=1`` shows the traceback; Ctrl-C prints one line and
  exits 130 (the trainer has saved a checkpoint and logged how to resume);
- log lines of dependencies (open_clip's INFO lines and its "no pretrained weights" warning,
  hydra, transformers) are hidden unless ``--verbose`` or ``hydra.verbose=true``; omniclip's own
  lines (losses, evaluations) stay.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from omniclip.errors import ConfigError, OmniclipError, SampleError, did_you_mean

RECIPES_PACKAGE = "omniclip.recipes"
#: Exit status of a run stopped by an omniclip error (config, data, weights), as argparse uses.
EXIT_ERROR = 2
#: Exit status after Ctrl-C / SIGTERM (128 + SIGINT), as shells report an interrupted command.
EXIT_INTERRUPTED = 130
#: Groups whose default option's keys `--help` lists, beside the recipe's own top-level keys.
HELP_KEY_GROUPS = ("trainer",)
_OWN_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_TOOLS_DIR = Path(__file__).resolve().parents[1] / "tools"  # a source checkout's preparation scripts


# ---------------------------------------------------------------------------------------- logging
class DependencyFilter(logging.Filter):
    """Passes omniclip's own records and, from other libraries, only errors.

    open_clip logs through the root logger, so a record is told apart by its logger name and by
    the file that logged it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in ("omniclip", "__main__") or record.pathname.startswith(_OWN_PACKAGE_DIR)
        return own or record.levelno >= logging.ERROR


def quiet_dependencies(verbose: bool = False) -> None:
    """Hide dependencies' log records below ERROR on every root handler, unless ``verbose``.

    Without any handler yet (commands that do not configure logging), one stderr handler is added
    so that Python's fallback does not print the dependencies' warnings unfiltered.
    """
    if not verbose:
        # transformers logs through its own handler, configured from this variable on import.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "transformers" in sys.modules:
            logging.getLogger("transformers").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, DependencyFilter)]:
            handler.removeFilter(old)
        if not verbose:
            handler.addFilter(DependencyFilter())


# ---------------------------------------------------------------------------------- recipe groups
def _recipe_roots(overrides: Sequence[str]) -> list[Any]:
    """Folders hydra searches for the recipe: the shipped package, then ``hydra.searchpath``."""
    roots: list[Any] = [resources.files(RECIPES_PACKAGE)]
    for override in _parse(overrides) or []:
        if override.key_or_group == "hydra.searchpath" and isinstance(override.value(), list):
            for entry in override.value():
                scheme, _, location = str(entry).partition("://")
                if scheme == "file":
                    roots.append(Path(location))
                elif scheme == "pkg":
                    roots.append(resources.files(location.replace("/", ".")))
    return roots


def _parse(argv: Sequence[str]) -> list[Any] | None:
    """hydra's parsed overrides among ``argv`` (hydra's own flags such as ``--cfg job`` set
    aside as its parser does), or None when they do not parse: hydra then reports why."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = get_args_parser().parse_known_args(list(argv))[0].overrides
        return OverridesParser.create().parse_overrides(overrides)
    except (HydraException, SystemExit):
        return None


def group_options(group: str, roots: Iterable[Any]) -> list[str] | None:
    """Every option of config group ``group`` (``experiment`` -> ``pointcloud/vitlens_l_shapenet``,
    ...), or None when no root has such a group."""
    options: set[str] = set()
    found = False
    for root in roots:
        folder = root.joinpath(*group.split("/"))
        if folder.is_dir():
            found = True
            options.update(_yaml_names(folder, ""))
    return sorted(options) if found else None


def _yaml_names(folder: Any, prefix: str) -> Iterable[str]:
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _yaml_names(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".yaml"):
            yield prefix + entry.name[: -len(".yaml")]


@dataclass
class _Recipe:
    """The defaults list and top-level keys of a primary recipe file, read without composing it."""

    groups: dict[str, Any] = field(default_factory=dict)  # group -> default option (None, "???")
    keys: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, config_name: str) -> "_Recipe":
        text = resources.files(RECIPES_PACKAGE).joinpath(f"{config_name}.yaml").read_text()
        raw = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
        recipe = cls()
        for entry in raw.pop("defaults", []):
            if isinstance(entry, dict):
                (group, option), = entry.items()
                group = group.removeprefix("optional ").removeprefix("override ")
                if not group.startswith("hydra/"):  # hydra's own settings, not the recipe's
                    recipe.groups[group] = option
        raw.pop("hydra", None)
        recipe.keys = raw
        return recipe


def check_group_choices(config_name: str, overrides: Sequence[str]) -> None:
    """Refuse an unknown option of a config group, and a required group left unset.

    hydra skips an ``optional`` group whose option does not exist, and names a missing required
    group only with a list of options; this says which option was meant, before anything loads.
    """
    parsed = _parse(overrides)
    if parsed is None:
        return
    recipe = _Recipe.load(config_name)
    roots = _recipe_roots(overrides)
    chosen: dict[str, Any] = {}
    for override in parsed:
        group = override.key_or_group
        if override.is_delete() or group.startswith("hydra") or override.package is not None:
            continue
        options = group_options(group, roots)
        if options is None:  # a key, not a group
            continue
        value = override.value()
        chosen[group] = value
        for name in [value] if isinstance(value, str) else getattr(value, "list", []):  # a sweep: a,b
            if isinstance(name, str) and name not in options:
                raise ConfigError(group, f"unknown {group} `{name}`{did_you_mean(name, options)} "
                                         f"(known: {', '.join(options)})")
    if "experiment" in chosen:  # an experiment sets the required groups itself
        return
    for group, default in recipe.groups.items():
        if default == "???" and group not in chosen:
            options = group_options(group, roots) or []
            either = "pass experiment=NAME or " if "experiment" in recipe.groups else "pass "
            raise ConfigError(group, f"not set: {either}{group}=OPTION (options: {', '.join(options)})")


# ------------------------------------------------------------------------------------------ help
def help_text(prog: str, config_name: str, description: str, overrides: Sequence[str] = ()) -> str:
    """What ``prog --help`` prints: purpose, usage, experiments, groups, common keys, options."""
    recipe = _Recipe.load(config_name)
    roots = _recipe_roots(overrides)
    groups = [g for g in recipe.groups if g != "experiment"]
    # A training recipe's experiments also pick groups no default names (``model``, for video).
    extra = sorted({entry.name for root in roots if root.is_dir() for entry in root.iterdir()
                    if entry.is_dir() and entry.name not in recipe.groups and entry.name not in ("experiment", "hydra")
                    and group_options(entry.name, roots)}) if "experiment" in recipe.groups else []
    lines = [f"usage: {prog} {'[experiment=NAME] ' if 'experiment' in recipe.groups else ''}"
             "[GROUP=OPTION ...] [KEY=VALUE ...] [--debug] [--verbose]", "", *textwrap.wrap(description, 100)]
    if "experiment" in recipe.groups:
        lines += ["", "experiments (experiment=NAME):", *(f"  {name}" for name in group_options("experiment", roots) or [])]
    lines += ["", "config groups (GROUP=OPTION, default in brackets):"]
    width = max(map(len, groups + extra), default=0)
    for group in groups + extra:
        default = _show(recipe.groups[group]) if group in recipe.groups else "set by the experiment"
        head = f"  {group.ljust(width)}  [{default}]  "
        lines += textwrap.wrap(", ".join(group_options(group, roots) or []), 100, initial_indent=head,
                               subsequent_indent=" " * len(head), break_on_hyphens=False)
    lines += ["", "common keys (KEY=VALUE; any key of the composed recipe can be set):"]
    lines += _wrapped(f"{k}={_show(v)}" for k, v in _flat(recipe.keys))
    for group in HELP_KEY_GROUPS:
        default = recipe.groups.get(group)
        if isinstance(default, str) and default != "???":
            text = resources.files(RECIPES_PACKAGE).joinpath(group, f"{default}.yaml").read_text()
            values = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
            lines += _wrapped(f"{group}.{k}={_show(v)}" for k, v in _flat(values))
    roots_keys = [k for g, k in (("data", "data.train.root=PATH"), ("eval", "eval.tasks.NAME.dataset.root=PATH"))
                  if g in recipe.groups]
    if roots_keys:
        lines += ["", *textwrap.wrap(
            "data: datasets are found under $OMNICLIP_DATA (default data/); point one elsewhere with "
            f"{' or '.join(roots_keys)}. tools/prepare_*.py build the expected layouts.", 100)]
    lines += [
        "", "options:",
        "  -h, --help   this message",
        "  --debug      show the full traceback of an error (as HYDRA_FULL_ERROR=1 does)",
        "  --verbose    also show dependencies' log lines (open_clip, hydra, transformers); hydra.verbose=true too",
        "  --cfg job    print the composed recipe and exit (hydra)",
    ]
    return "\n".join(lines)


def _flat(values: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _show(value: Any) -> str:
    """A recipe value as it is typed on the command line (``???``: must be given)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return "required" if value == "???" else str(value)


def _wrapped(items: Iterable[str]) -> list[str]:
    return textwrap.wrap("  ".join(items), 100, initial_indent="  ", subsequent_indent="  ",
                         break_on_hyphens=False, break_long_words=False)


# ---------------------------------------------------------------------------------------- errors
def one_line_error(prog: str, exc: BaseException, cfg: DictConfig | None = None) -> str:
    """``prog: error: <what and where>; <how to fix>`` on one line."""
    message = " ".join(str(exc).split())  # messages listing several keys span lines
    hint = _fix_hint(exc, cfg)
    return f"{prog}: error: {message}" + (f"; {hint}" if hint and hint not in message else "")


def _fix_hint(exc: BaseException, cfg: DictConfig | None) -> str:
    from omniclip.data import TooManySkippedError

    trainer = cfg is not None and "trainer" in cfg
    if isinstance(exc, ConfigError) and exc.key.rsplit(".", 1)[-1] == "root":
        return _data_hint(exc.key, cfg)
    if isinstance(exc, SampleError):
        key = "trainer.bad_samples" if trainer else "bad_samples"
        return f"set {key}=skip to skip unusable files and count them"
    if isinstance(exc, TooManySkippedError):
        key = "trainer.max_skip_fraction" if trainer else "max_skip_fraction"
        return f"the data looks broken, not single files: check it (tools/prepare_*.py), or raise {key}"
    return ""


def _data_hint(key: str, cfg: DictConfig | None) -> str:
    section = key.rsplit(".", 1)[0]
    name = OmegaConf.select(cfg, section + ".name", default=None) if cfg is not None else None
    root = OmegaConf.select(cfg, key, default=None) if cfg is not None else None
    tools = sorted(p.stem.removeprefix("prepare_") for p in _TOOLS_DIR.glob("prepare_*.py"))
    # The dataset's name, or, for a format's name such as `list`, the recipe folder's name when
    # that is what a prepare tool knows (data/kinetics400 -> tools/prepare_kinetics.py).
    label, tool = name, None
    for candidate in (name, Path(str(root)).name if name and root else None):
        tool = next((t for t in tools if candidate and str(candidate).startswith(t)), None)
        if tool:
            label = candidate
            break
    where = os.environ.get("OMNICLIP_DATA")
    hint = (f"datasets are looked up under $OMNICLIP_DATA ({'now ' + where if where else 'unset: data/'}); "
            f"set {key}=/path/to/{label or 'dataset'}")
    return hint + (f", or prepare it with python tools/prepare_{tool}.py" if tool else "")


def _debugging(argv_debug: bool) -> bool:
    return argv_debug or os.environ.get("HYDRA_FULL_ERROR") == "1"


# ---------------------------------------------------------------------------------- entry point
@dataclass
class _Flags:
    """The flags omniclip handles itself; everything else goes to hydra."""

    help: bool = False
    debug: bool = False
    verbose: bool = False
    rest: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, argv: Sequence[str]) -> "_Flags":
        flags = cls()
        for arg in argv:
            if arg in ("-h", "--help"):
                flags.help = True
            elif arg == "--debug":
                flags.debug = True
            elif arg == "--verbose":
                flags.verbose = True
            else:
                flags.rest.append(arg)
        return flags


def _check_recipe_data(cfg: DictConfig) -> None:
    from omniclip.recipe import check_recipe_data

    check_recipe_data(cfg)


def hydra_entry(
    config_name: str,
    run: Callable[[DictConfig], Any],
    description: str | None = None,
    preflight: Callable[[DictConfig], Any] | None = _check_recipe_data,
) -> Callable[[], None]:
    """A ``main()`` that composes ``config_name`` with the command-line overrides and calls ``run``.

    ``preflight`` runs first on the composed recipe; by default it builds every dataset the
    recipe names, so bad data fails before ``run`` loads any weights. Commands whose ``run``
    already builds its datasets first pass None. ``description`` (default: the first sentence of
    ``run``'s docstring) heads ``--help``; the program name comes from ``run``'s module.
    """
    prog = "omniclip-" + run.__module__.rsplit(".", 1)[-1]
    about = description or _first_sentence(run.__doc__ or "")

    def main() -> None:
        flags = _Flags.parse(sys.argv[1:])
        if flags.help:
            print(help_text(prog, config_name, about, flags.rest))
            return
        debug = _debugging(flags.debug)
        previous = os.environ.get("HYDRA_FULL_ERROR")
        # hydra then re-raises what it would print (a composition error over several lines, with a
        # hint about this variable): errors are reported here, on one line.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            check_group_choices(config_name, flags.rest)
            sys.argv = [sys.argv[0], *flags.rest]  # hydra parses sys.argv
            hydra.main(version_base="1.3", config_path=f"pkg://{RECIPES_PACKAGE}", config_name=config_name)(
                _task(prog, run, preflight, flags.verbose, debug))()
            return
        except OmniclipError as exc:  # raised before hydra composed the recipe, or re-raised when debugging
            report, code = traceback.format_exc() if debug else one_line_error(prog, exc), EXIT_ERROR
        except CompactHydraException as exc:  # the overrides do not compose: a bad key, value or option
            report, code = traceback.format_exc() if debug else f"{prog}: error: {_hydra_message(exc)}", EXIT_ERROR
        except KeyboardInterrupt as exc:
            interrupted = f"{prog}: interrupted" + (f" ({exc})" if str(exc) else "")
            report, code = traceback.format_exc() if debug else interrupted, EXIT_INTERRUPTED
        finally:
            if not flags.debug:
                _restore_env("HYDRA_FULL_ERROR", previous)
        _exit(report.rstrip("\n"), code)

    main.__doc__ = f"Compose the `{config_name}` recipe with command-line overrides, then run it."
    return main


def _task(prog: str, run: Callable[[DictConfig], Any], preflight: Callable[[DictConfig], Any] | None,
          verbose: bool, debug: bool) -> Callable[[DictConfig], Any]:
    """``run`` as hydra's task: quiet dependencies, preflight, and one-line omniclip errors.

    hydra catches every Exception a task raises and prints its traceback; SystemExit passes.
    """

    @functools.wraps(run)  # hydra names the job (and its log file) after the wrapped function's module
    def task(cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        hydra_verbose = HydraConfig.initialized() and bool(HydraConfig.get().verbose)
        quiet_dependencies(verbose or hydra_verbose)  # after hydra has set up the handlers
        try:
            try:
                if preflight is not None:
                    preflight(cfg)
                return run(cfg)
            except MissingMandatoryValue as exc:  # a `???` key left unset
                raise ConfigError(exc.full_key, f"required: pass {exc.full_key}=...") from exc
        except OmniclipError as exc:
            if debug:
                raise
            line = one_line_error(prog, exc, cfg)
        _exit(line, EXIT_ERROR)

    return task


def _hydra_message(exc: BaseException) -> str:
    """hydra's composition error on one line: its first paragraph, and the OmegaConf cause."""
    from omegaconf.errors import OmegaConfBaseException

    message = str(exc).split("\n\n")[0]
    if isinstance(exc.__cause__, OmegaConfBaseException):
        message += f" ({str(exc.__cause__).splitlines()[0]})"
    return " ".join(message.split())


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _exit(report: str, code: int) -> None:
    """Print ``report`` to stderr and exit with ``code``; call it outside any ``except`` block.

    The error's traceback, whose frames may hold a DataLoader iterator, must be freed first, so
    that the iterator's worker processes shut down instead of blocking the interpreter's exit.
    """
    gc.collect()
    print(report, file=sys.stderr)
    raise SystemExit(code)


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.strip().split("\n\n")[0].split()).replace("``", "")
    return paragraph.split(". ")[0].rstrip(".") + "."
