"""The README's Python example runs as written, and its commands exist."""

import re
import tomllib
from pathlib import Path

import torch

from omniclip import get_modality

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs(capsys):
    """The example prints exactly the classes an independent zero-shot computation from its own
    embeddings and CLIP text features gives: any two class names are not enough."""
    api = README[README.index("## Python API"):]
    example = re.findall(r"```python\n(.*?)```", api, flags=re.S)[0]  # the section's example
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out

    embedding, classes, backbone = namespace["embedding"], namespace["classes"], namespace["backbone"]
    assert embedding.shape == (2, 64)  # "[2, 64], unit norm, in CLIP space"
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    templates = get_modality("pointcloud").template_set()
    assert len(templates) == 64  # "the 64 ULIP templates"
    with torch.no_grad():
        per_class = []
        for name in classes:
            prompts = [t.replace("{}", name).replace("{c}", name) for t in templates]
            feats = torch.nn.functional.normalize(backbone.model.encode_text(backbone.tokenizer(prompts)).double(), dim=-1)
            per_class.append(torch.nn.functional.normalize(feats.mean(0), dim=-1))
    reference = torch.stack(per_class)
    # the classifier the example built is the documented one (mean of normalised prompt
    # embeddings, renormalised, in the order of `classes`)
    torch.testing.assert_close(namespace["classifier"].double(), reference, atol=1e-5, rtol=0)
    scores = embedding.double() @ reference.T
    top2 = scores.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1] > 1e-6).all()  # no near-ties: the exact answer is well defined
    expected = [classes[i] for i in scores.argmax(-1).tolist()]
    assert printed == f"{expected}\n"


def test_video_example_runs(capsys):
    """The video example's embeddings are what it says (the per-frame CLIP image embeddings,
    averaged, renormalised; ILA's frames equal CLIP's at initialisation and MIT pools them) and
    it prints the classes an independent computation gives."""
    import torch.nn.functional as F

    section = README[README.index("## Video models"):README.index("## Zero-shot evaluation")]
    example = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    backbone, clips, classes = namespace["backbone"], namespace["clips"], namespace["classes"]
    with torch.no_grad():
        frames = backbone.model.encode_image(clips.flatten(0, 1)).view(2, 8, -1)
        torch.testing.assert_close(namespace["video"], F.normalize(frames.mean(1), dim=-1), atol=1e-5, rtol=0)
        ila = namespace["ila"]
        torch.testing.assert_close(ila.encode_frames(clips), frames, atol=1e-5, rtol=0)
        torch.testing.assert_close(namespace["aligned"], F.normalize(ila.temporal(frames), dim=-1), atol=1e-5, rtol=0)
        text = F.normalize(backbone.model.encode_text(backbone.tokenizer(
            [f"a video of a person {c}." for c in classes])), dim=-1)
    scores = namespace["video"] @ text.T
    assert printed == f"{[classes[i] for i in scores.argmax(-1).tolist()]}\n"


def test_readme_commands_are_installed_scripts_or_files():
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    commands = re.findall(r"^(omniclip-[a-z]+)\b", README, flags=re.M)
    assert commands and set(commands) <= scripts
    for tool in re.findall(r"python (tools/\S+\.py)", README):
        assert (ROOT / tool).is_file(), tool
    misspelled = "pointcloud/vitlens_l_shapent"  # the README's example of the error for a typo
    for experiment in re.findall(r"experiment=([\w/]+)", README):
        if experiment != misspelled:
            assert (ROOT / "recipes" / "experiment" / f"{experiment}.yaml").is_file(), experiment
    assert f"unknown experiment `{misspelled}` (closest: pointcloud/vitlens_l_shapenet" in README
