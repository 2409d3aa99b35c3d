"""``omniclip-describe`` end to end on a tiny InstructBLIP saved with ``save_pretrained``.

The folder holds the model of tests/heads/test_instructblip.py (wide init, so answers depend on
the input) and a processor with word-level tokenizers built here, offline. Lenses are built on
its vision tower and saved with ``save_lens``. The reference for every answer is computed
independently of the command: the cloud or wave read with numpy / soundfile, the in-memory lens
and model, the prompt from transformers' own processor (given an image, which is when it adds the
image tokens), `InstructBlipHead.generate`, then the tokenizer's decode of the new tokens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    Blip2Config,
    Blip2VisionModel,
    BlipImageProcessor,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    PreTrainedTokenizerFast,
)

from omniclip import describe
from omniclip.backbone import load_backbone
from omniclip.blip_backbone import InstructBlipBackbone
from omniclip.blip_trunk import BlipVisionTrunk
from omniclip.errors import ConfigError
from omniclip.heads import InstructBlipHead
from omniclip.model import build_lens_model, load_lens_model
from omniclip.modalities.pointcloud.io import read_point_cloud
from tests.heads.test_instructblip import IMAGE_TOKEN, QUERIES, tiny_config

ROOT = Path(__file__).parents[2]
QUESTION = "w5 w7 w9 w11"
POINTS = 256
CLOUD_TOKENIZER = {"name": "pointbert", "num_groups": 16, "group_size": 8, "eval_fps_start": 0}
SMALL_HEADS = {"latent_dim_head": 8, "cross_dim_head": 8}


def word_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """Words ``w3``..``w97`` are their ids; ``<image>`` is the model's image token (98)."""
    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, IMAGE_TOKEN)}, "<image>": IMAGE_TOKEN}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:  # OPT's tokenizer starts a text with </s> (its bos_token_id 2)
        tokenizer.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="</s>", eos_token="</s>", padding_side="left")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The saved model folder, lenses on its tower, and data files; the in-memory originals."""
    root = tmp_path_factory.mktemp("describe")
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        model.query_tokens.normal_()
    processor = InstructBlipProcessor(BlipImageProcessor(size={"height": 30, "width": 30}), word_tokenizer(True),
                                      word_tokenizer(False), num_query_tokens=QUERIES)
    model_dir = root / "instructblip"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    backbone = load_backbone(f"instructblip:{model_dir}")
    lenses = {}
    for modality, tokenizer_cfg in (("pointcloud", CLOUD_TOKENIZER), ("audio", {})):
        torch.manual_seed(1)
        lens_model, config = build_lens_model(modality, backbone.trunk(), tokenizer_cfg, SMALL_HEADS, backbone.name)
        with torch.no_grad():  # wide weights, so that the tower's features (and answers) follow the input
            for param in lens_model.lens.parameters():
                param.normal_(0, 0.5)
        config.update(backbone={"name": backbone.name, "pretrained": backbone.pretrained}, trunk={})
        lens_model.save_lens(root / f"{modality}_lens", config)
        lenses[modality] = lens_model.eval()

    rng = np.random.default_rng(0)
    clouds = {}
    for i in range(3):
        cloud = rng.normal(size=(POINTS, 3)).astype(np.float32) * (1 + i)
        np.save(root / f"cloud{i}.npy", cloud)
        clouds[f"cloud{i}.npy"] = cloud
    header = (f"ply\nformat ascii 1.0\nelement vertex {POINTS}\n"
              "property float x\nproperty float y\nproperty float z\nend_header\n")
    # repr of a float32 parses back to the same float32: the .ply holds cloud1's very points
    body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in clouds["cloud1.npy"])
    (root / "same_as_cloud1.ply").write_text(header + body)
    wave = (0.3 * np.sin(np.arange(16000) * 0.05) + 0.05 * rng.normal(size=16000)).astype(np.float32)
    soundfile.write(root / "tone.wav", wave, 16000, subtype="FLOAT")
    return {"root": root, "model_dir": model_dir, "model": model, "processor": processor, "lenses": lenses,
            "clouds": clouds, "wave": wave}


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch):
    """In process, the command leaves this process's logging and progress bars as they are."""
    monkeypatch.setattr(describe, "_quiet", lambda verbose: None)


def reference_answers(assets, inputs: torch.Tensor, lens_model, **generate_kwargs) -> list[str]:
    """Answers computed without the command: processor prompt (with an image), head, decode."""
    prompt = assets["processor"](images=torch.rand(3, 30, 30), text=QUESTION, return_tensors="pt")
    batch = inputs.shape[0]
    assert prompt["input_ids"][0, :QUERIES].eq(IMAGE_TOKEN).all()  # the processor's own image tokens
    with torch.no_grad():
        features = lens_model.trunk.normed_tokens(lens_model.forward_features(inputs))
    head = InstructBlipHead(assets["model"])
    generated = head.generate(features, prompt["qformer_input_ids"].expand(batch, -1),
                              prompt["input_ids"].expand(batch, -1), do_sample=False, **generate_kwargs)
    new = generated[:, prompt["input_ids"].shape[1]:]
    assert new.shape[1] > 0
    return [text.strip() for text in assets["processor"].tokenizer.batch_decode(new, skip_special_tokens=True)]


def unit_sphere(cloud: np.ndarray) -> torch.Tensor:
    xyz = cloud.astype(np.float64)
    xyz = xyz - xyz.mean(axis=0)
    return torch.from_numpy((xyz / np.sqrt((xyz**2).sum(axis=1)).max()).astype(np.float32))


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = describe.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def common(assets, lens: str = "pointcloud_lens", *extra: str) -> list[str]:
    return ["--question", QUESTION, "--lens", str(assets["root"] / lens), "--instructblip",
            str(assets["model_dir"]), "--device", "cpu", *extra]


# ------------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize("generate", [["--max-new-tokens", "6"], ["--max-new-tokens", "5", "--num-beams", "3"]])
def test_point_cloud_answers_equal_the_heads_generate_and_batch_size_does_not_change_them(assets, capsys, tmp_path,
                                                                                        generate):
    root = assets["root"]
    files = [root / "cloud0.npy", root / "cloud1.npy", root / "cloud2.npy", root / "same_as_cloud1.ply"]
    clouds = torch.stack([unit_sphere(assets["clouds"][n]) for n in ("cloud0.npy", "cloud1.npy", "cloud2.npy",
                                                                      "cloud1.npy")])
    kwargs = {"max_new_tokens": int(generate[1])} | ({"num_beams": 3} if "--num-beams" in generate else {})
    expected = reference_answers(assets, clouds, assets["lenses"]["pointcloud"], **kwargs)
    assert len(set(expected[:3])) > 1  # the clouds matter
    rows = {}
    for batch_size in (1, 3):
        output = tmp_path / f"b{batch_size}" / "answers.jsonl"
        code, out, err = run_main([*map(str, files), *common(assets), "--num-points", str(POINTS), *generate,
                                   "--batch-size", str(batch_size), "--output", str(output)], capsys)
        assert (code, out, err) == (0, "", "")
        rows[batch_size] = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows[1] == rows[3] == [{"file": str(f), "question": QUESTION, "answer": a} for f, a in zip(files, expected)]
    assert rows[1][3]["answer"] == rows[1][1]["answer"]  # the .ply holds cloud1's points


def test_folder_and_list_file_to_stdout(assets, capsys, tmp_path):
    root = assets["root"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# clouds\n{root / 'cloud2.npy'}\n\n")
    code, out, err = run_main([str(root), "--list", str(listing), *common(assets, "pointcloud_lens", "--num-points",
                                                                           str(POINTS), "--max-new-tokens", "3")],
                              capsys)
    assert (code, err) == (0, "")
    files = [json.loads(line)["file"] for line in out.splitlines()]
    # the folder's point-cloud files, sorted (not the wav, not the lenses' config.json), then the list's
    assert files == [str(root / n) for n in ("cloud0.npy", "cloud1.npy", "cloud2.npy", "same_as_cloud1.ply",
                                             "cloud2.npy")]
    answers = [json.loads(line)["answer"] for line in out.splitlines()]
    assert answers[2] == answers[4]


def test_audio_answers_equal_the_heads_generate(assets, capsys, tmp_path):
    # a 1 s file is repeated to one 5 s clip at 16 kHz, as the evaluation datasets read it
    wave = torch.from_numpy(np.resize(assets["wave"], 5 * 16000))[None]
    expected = reference_answers(assets, wave, assets["lenses"]["audio"], max_new_tokens=6)
    output = tmp_path / "audio.jsonl"
    code, out, err = run_main([str(assets["root"] / "tone.wav"), *common(assets, "audio_lens", "--max-new-tokens",
                                                                         "6", "--output", str(output))], capsys)
    assert (code, err) == (0, "")
    assert json.loads(output.read_text()) == {"file": str(assets["root"] / "tone.wav"), "question": QUESTION,
                                              "answer": expected[0]}


# ------------------------------------------------------------------------------ loading and saving
def test_a_lens_on_the_instructblip_tower_saves_and_loads_with_its_backbone(assets):
    lens_dir = assets["root"] / "pointcloud_lens"
    config = json.loads((lens_dir / "config.json").read_text())
    assert config["backbone"] == {"name": f"instructblip:{assets['model_dir']}", "pretrained": None}
    model, backbone, _ = load_lens_model(lens_dir)  # the backbone rebuilt from the config alone
    assert isinstance(backbone, InstructBlipBackbone) and isinstance(model.trunk, BlipVisionTrunk)
    original = assets["lenses"]["pointcloud"].trainable_state_dict()
    loaded = model.trainable_state_dict()
    assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in original)
    clouds = unit_sphere(assets["clouds"]["cloud0.npy"])[None]
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(clouds),
                                   assets["lenses"]["pointcloud"].forward_features(clouds), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"config `backbone.pretrained`: `x.pt`: an InstructBLIP backbone names"):
        load_backbone(f"instructblip:{assets['model_dir']}", pretrained="x.pt")
    for anchors in (lambda: backbone.encode_text(["a chair"]), lambda: backbone.logit_scale,
                    lambda: backbone.fingerprint("text")):  # training and zero-shot need a CLIP's towers
        with pytest.raises(ConfigError, match=r"has no contrastive text or image tower .* anchors come from a CLIP"):
            anchors()


# ------------------------------------------------------------------------------------------- errors
def test_a_lens_trained_on_a_clip_tower_names_both_widths(assets, capsys, tiny_backbone, tmp_path):
    lens_model, config = build_lens_model("pointcloud", tiny_backbone.trunk(), CLOUD_TOKENIZER, SMALL_HEADS,
                                          tiny_backbone.name)
    config.update(backbone={"name": "omniclip-tiny", "pretrained": None}, trunk={})
    lens_model.save_lens(tmp_path / "clip_lens", config)
    code, out, err = run_main([str(assets["root"] / "cloud0.npy"), *common(assets, "pointcloud_lens"), "--lens",
                               str(tmp_path / "clip_lens")], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"omniclip-describe: error: the lens {tmp_path / 'clip_lens'} was trained on the 64-wide vision tower of "
        f"omniclip-tiny, not on an InstructBLIP one: instructblip:{assets['model_dir']}'s Q-Former reads its own "
        "32-wide tower; use a lens trained on that tower (backbone instructblip:...)"]


def test_a_lens_trained_on_another_instructblip_tower_names_both_widths(assets, capsys, tmp_path):
    vision = Blip2VisionModel(Blip2Config(vision_config={"hidden_size": 48, "intermediate_size": 37,
                                                         "num_hidden_layers": 1, "num_attention_heads": 4,
                                                         "image_size": 30, "patch_size": 2}).vision_config)
    lens_model, config = build_lens_model("pointcloud", BlipVisionTrunk(vision), CLOUD_TOKENIZER, SMALL_HEADS)
    config.update(backbone={"name": "instructblip:/models/wider", "pretrained": None}, trunk={})
    lens_model.save_lens(tmp_path / "wide_lens", config)
    code, out, err = run_main([str(assets["root"] / "cloud0.npy"), *common(assets, "pointcloud_lens"), "--lens",
                               str(tmp_path / "wide_lens")], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"omniclip-describe: error: the lens {tmp_path / 'wide_lens'} was trained on a 48-wide vision tower (backbone "
        f"instructblip:/models/wider) but instructblip:{assets['model_dir']}'s tower is 32 wide: a lens feeds only the "
        "tower it was trained on; use a lens trained on this tower"]


def test_a_folder_of_another_model_type_or_without_the_qformer_tokenizer_is_refused(assets, tmp_path):
    Blip2Config().save_pretrained(tmp_path / "blip2")
    with pytest.raises(ConfigError, match=rf"`instructblip:{tmp_path / 'blip2'}` is a `blip-2` model, not "
                                          "InstructBLIP"):
        load_backbone(f"instructblip:{tmp_path / 'blip2'}")
    # transformers would give the Q-Former the language model's tokenizer, with a warning only
    shutil.copytree(assets["model_dir"], tmp_path / "partial", ignore=shutil.ignore_patterns("qformer_tokenizer"))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'partial'} has no qformer_tokenizer \(expected"):
        load_backbone(f"instructblip:{tmp_path / 'partial'}")


def test_an_image_checkpoint_given_for_videos_is_refused_before_its_weights_load(assets, monkeypatch):
    from transformers import InstructBlipVideoForConditionalGeneration

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were read before the model type was checked")

    monkeypatch.setattr(InstructBlipVideoForConditionalGeneration, "from_pretrained", no_weights)
    with pytest.raises(describe.DescribeError) as info:
        describe.load_video_describer(str(assets["model_dir"]))
    assert str(info.value) == (f"--instructblip {assets['model_dir']}: a `instructblip` model; videos need an "
                               "InstructBlipVideo checkpoint (model_type `instructblipvideo`)")


@pytest.mark.parametrize(("name", "problem"), [
    ("bad.npy", None),  # the point-cloud reader's own message
    ("missing.npy", "file not found"),
    ("clip.mp4", None),  # a video, with an image-only checkpoint
])
def test_an_unreadable_or_video_file_is_one_line(assets, capsys, tmp_path, name, problem):
    path = tmp_path / name
    if name == "bad.npy":
        path.write_bytes(b"\x93NUMPY garbage")
        with pytest.raises(Exception) as info:
            read_point_cloud(path)
        problem = str(info.value).removeprefix(f"{path}: ")
    if name == "clip.mp4":
        path.write_bytes(b"\x00" * 64)
    good = assets["root"] / "cloud0.npy"
    output = tmp_path / "out.jsonl"
    code, out, err = run_main([str(good), str(path), *common(assets, "pointcloud_lens", "--num-points", str(POINTS),
                                                             "--max-new-tokens", "2", "--output", str(output))],
                              capsys)
    assert (code, out) == (2, "")
    if name == "clip.mp4":  # refused before any model loads
        assert err.splitlines() == [f"omniclip-describe: error: --instructblip {assets['model_dir']}: a `instructblip` "
                                    "model, and videos need an InstructBlipVideo checkpoint (model_type "
                                    "`instructblipvideo`, e.g. Salesforce/instructblip-vicuna-7b's video conversion); "
                                    "it also serves a lens"]
        assert not output.exists()
    else:
        assert err.splitlines() == [f"omniclip-describe: error: {path}: {problem}"]


def test_the_first_batches_answers_are_kept_when_a_later_file_is_bad(assets, capsys, tmp_path):
    output = tmp_path / "out.jsonl"
    code, _, err = run_main([str(assets["root"] / "cloud0.npy"), str(tmp_path / "gone.ply"),
                             *common(assets, "pointcloud_lens", "--num-points", str(POINTS), "--max-new-tokens", "2",
                                     "--batch-size", "1", "--output", str(output))], capsys)
    assert code == 2 and err.endswith("gone.ply: file not found\n")
    written = [json.loads(line)["file"] for line in output.read_text().splitlines()]
    assert written == [str(assets["root"] / "cloud0.npy")]


def test_a_missing_model_fails_at_once_offline_saying_what_to_download(assets, tmp_path):
    """A console-script run (subprocess): exit status, one line on stderr, nothing else, fast."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "omniclip.describe", str(assets["root"] / "cloud0.npy"),
                           "--question", QUESTION, "--lens", str(assets["root"] / "pointcloud_lens"),
                           "--instructblip", "Salesforce/instructblip-flan-t5-xl"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "omniclip-describe: error: the files of the InstructBLIP model `Salesforce/instructblip-flan-t5-xl` are not "
        "in the local cache and huggingface.co cannot be reached (offline). Download the repository "
        "https://huggingface.co/Salesforce/instructblip-flan-t5-xl (`hf download Salesforce/instructblip-flan-t5-xl "
        "--local-dir DIR`: config, weights, processor and both tokenizers) on a machine with network access, copy it "
        "here, then name the folder instead of the hub id (instructblip:DIR; omniclip-describe --instructblip DIR)."]
    assert time.monotonic() - start < 60  # imports included; no download retries


def test_a_hub_id_loads_from_the_cache_offline(assets, capsys, tmp_path):
    """The hub-id path (real checkpoints): the saved folder laid out as a Hugging Face cache entry."""
    snapshot = tmp_path / "hf" / "hub" / "models--tiny--instructblip" / "snapshots" / "0123abc"
    shutil.copytree(assets["model_dir"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    args = [str(assets["root"] / "cloud0.npy"), *common(assets, "pointcloud_lens", "--num-points", str(POINTS),
                                                          "--max-new-tokens", "4")]
    code, expected, _ = run_main(args, capsys)  # from the folder
    assert code == 0
    args[args.index("--instructblip") + 1] = "tiny/instructblip"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "omniclip.describe", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == expected and json.loads(expected)["answer"]


def test_a_model_folder_that_is_not_there_is_one_line(assets, capsys, tmp_path):
    missing = tmp_path / "no-model"
    code, out, err = run_main([str(assets["root"] / "cloud0.npy"), "--question", QUESTION, "--lens",
                               str(assets["root"] / "pointcloud_lens"), "--instructblip", str(missing)], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"omniclip-describe: error: backbone `instructblip:{missing}`: {missing} is not a folder (expected a folder "
        "written by save_pretrained, or a hub id such as Salesforce/instructblip-flan-t5-xl)"]


def test_help_and_usage_errors(capsys):
    code, out, err = run_main(["--help"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("usage: omniclip-describe [-h]")
    for flag in ("--question", "--lens", "--instructblip", "--max-new-tokens", "--num-beams", "--batch-size",
                 "--output", "--list", "--num-frames", "InstructBlipVideo checkpoint"):
        assert flag in out
    code, out, err = run_main(["x.npy", "--lens", "l", "--instructblip", "m"], capsys)
    assert code == 2
    assert err.splitlines()[-1] == "omniclip-describe: error: the following arguments are required: --question"
    for value, shown in (("0", "0"), ("two", "'two'")):
        code, out, err = run_main(["x.npy", "--question", "q", "--lens", "l", "--instructblip", "m", "--num-beams",
                                   value], capsys)
        assert code == 2
        assert err.splitlines()[-1] == ("omniclip-describe: error: argument --num-beams: must be a positive "
                                        f"integer, got {shown}")


def test_the_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'omniclip-describe = "omniclip.describe:main"' in text
