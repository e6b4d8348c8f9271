"""Config mistakes stop `svip` and the workflow before any job starts, with a line per problem naming the key,
the value and the fix, and no traceback; data-level stops (duplicates, leaks) end the same way."""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, copy_workflow, snakemake, svip, write_config
from fake_hub import LFS_SUFFIXES, FakeHub

from svip_core.config import ConfigError, load_config, validate_config
from svip_core.synthetic.generate import write_dataset

# (mistake as an override file, the key the line must name, words of the fix); TINY's patch size is 8.
MISTAKES = {
    "unknown key": ({"model": {"gat_layer": 3}}, "model.gat_layer", "did you mean model.gat_layers?"),
    "not a patch multiple": ({"features": {"frame_size": [100, 80]}}, "features.frame_size", "patch size 8"),
    "missing backbone folder": ({"features": {"backbone": "/nonexistent/folder"}}, "features.backbone",
                                "folder not found"),
    "out of range": ({"train": {"lr": -1}}, "train.lr", "give a number > 0"),
    "wrong type": ({"train": {"epochs": "ten"}}, "train.epochs", "give an integer >= 1"),
    "unknown choice": ({"features": {"mode": "roii"}}, "features.mode", "did you mean roi?"),
    "heads do not divide": ({"model": {"d_model": 15}}, "model.d_model", "use 14 or 16"),
    "seed twice": ({"train": {"seeds": [1, 1]}}, "train.seeds", "list each seed once"),
    "ablation of an unknown key": ({"ablations": {"no_gat": {"gat_layer": 0}}}, "ablations.no_gat.gat_layer",
                                   "did you mean ablations.no_gat.gat_layers?"),
    "missing data folder": ({"data": {"source": "/nonexistent/data"}}, "data.source", "folder not found"),
    "whole-number float": ({"train": {"epochs": 8.0}}, "train.epochs = 8.0", "give an integer >= 1"),
    "number YAML reads as text": ({"train": {"lr": "1e-3"}}, "train.lr", "write it with a dot"),
    "boolean as a name": ({"ablations": {False: {"gat_layers": 0}}}, "ablations.False", "quote it in the YAML"),
    "ablation heads": ({"ablations": {"x": {"temporal_heads": 3}}}, "ablations.x.temporal_heads = 3",
                       "does not divide model.d_model (16). Fix: use 1, 2, 4"),
    "ablation same as the full model": ({"ablations": {"e": {"gat_layers": 1}}}, "ablations.e",
                                        "the same model as the full model"),
    "more tuned blocks than the backbone has": ({"train": {"finetune_blocks": 2}}, "train.finetune_blocks = 2",
                                                "the backbone has 1 blocks. Fix: set it between 0 and 1"),
    "backbone learning rate not positive": ({"train": {"backbone_lr_scale": 0}}, "train.backbone_lr_scale",
                                            "give a number > 0"),
    "visual dropout with tuned blocks": ({"train": {"finetune_blocks": 1, "augment": {"drop_visual": 0.2}}},
                                         "train.augment.drop_visual = 0.2", "Fix: set one of them to 0"),
    "clip visual dropout with tuned blocks": ({"train": {"finetune_blocks": 1, "augment": {"drop_visual_clips": 0.5}}},
                                              "train.augment.drop_visual_clips = 0.5", "Fix: set one of them to 0"),
    "mirrored clips with facing directions": ({"model": {"looks_at": 1}, "train": {"augment": {"mirror": 0.5}}},
                                              "train.augment.mirror = 0.5", "Fix: set one of them to 0"),
    "an ablation named like a learning-curve run": ({"ablations": {"full@5": {"gat_layers": 0}}}, 'ablations."full@5"',
                                                    "Fix: rename the ablation"),
    "ablation tuning other blocks": ({"train": {"finetune_blocks": 1}, "ablations": {"x": {"finetune_blocks": 2}}},
                                     "ablations.x.finetune_blocks = 2", "Fix: set it to 0"),
}
# What Snakemake itself says on starting, before it parses the Snakefile.
SNAKEMAKE_NOTICES = ("Using workflow specific profile", "Config file config.yaml is extended")


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if line and not line.startswith(SNAKEMAKE_NOTICES)]


def assert_one_line(result: subprocess.CompletedProcess, key: str, fix: str) -> None:
    lines = problem_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 1, lines
    assert key in lines[0] and fix in lines[0] and "Fix: " in lines[0], lines[0]


def svip_hash(folder: Path, *configfiles: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return svip(*[a for f in configfiles for a in ("--configfile", f)], "hash", "train", cwd=folder, env=env,
                timeout=60)


@pytest.mark.parametrize("mistake", MISTAKES)
def test_svip_names_each_config_mistake_in_one_line(tmp_path, mistake):
    override, key, fix = MISTAKES[mistake]
    write_config(tmp_path / "config.yaml", TINY)
    result = svip_hash(tmp_path, write_config(tmp_path / "mistake.yaml", override))
    assert_one_line(result, key, fix)
    assert result.stdout == ""


# The lines come from the same checks as svip's; the workflow adds how they are printed at parse time. One
# mistake of each layer: the schema, values that depend on each other, assets.
@pytest.mark.parametrize("mistake", ["unknown key", "heads do not divide", "missing backbone folder"])
def test_the_workflow_stops_on_a_config_mistake_before_any_job(workflow_dir, mistake):
    override, key, fix = MISTAKES[mistake]
    result = snakemake(workflow_dir, "--configfile", str(write_config(workflow_dir / "mistake.yaml", override)))
    assert_one_line(result, key, fix)
    assert not (workflow_dir / "results").exists()


def test_training_across_nodes_on_this_machine_names_the_slurm_profile(tmp_path):
    """The train job's launcher (planning cannot know the executor) refuses train.nodes > 1 outside SLURM, in one
    line, before torchrun starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = svip("torchrun", "--nproc", "1", "--nodes", "2", "--", "no_such_script.py", cwd=tmp_path, env=env)
    lines = problem_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "train.nodes = 2" in lines[0] and "Fix: run with --profile profiles/slurm" in lines[0], lines[0]


def test_every_problem_gets_its_own_line(tmp_path):
    write_config(tmp_path / "config.yaml", TINY)
    override = {"train": {"lr": 0, "epochs": "ten", "workers": "many"}, "modle": {}}
    result = svip_hash(tmp_path, write_config(tmp_path / "mistakes.yaml", override))
    lines = problem_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 4 and "Traceback" not in result.stderr
    for key in ("train.lr = 0", 'train.epochs = "ten"', 'train.workers = "many"', "modle = {}: unknown key"):
        assert sum(key in line for line in lines) == 1, (key, lines)
    assert "did you mean model?" in result.stderr


def test_a_data_folder_without_clips_is_named(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    write_config(tmp_path / "config.yaml", {**TINY, "data": {**TINY["data"], "source": str(tmp_path / "data")}})
    assert_one_line(svip_hash(tmp_path), "data.source", "no clips found. Fix: put clips in")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    write_config(tmp_path / "config.yaml", TINY)
    (tmp_path / "broken.yaml").write_text("train:\n  lr: 0.1\n epochs: [3\n")
    result = svip_hash(tmp_path, tmp_path / "broken.yaml")
    lines = problem_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert "broken.yaml line 3" in lines[0] and "not valid YAML" in lines[0]


def test_the_patch_size_is_the_backbones_own(tmp_path, tiny_config):
    """A real DINOv2 has 14-pixel patches: the frame size is checked against the folder's config.json."""
    (tmp_path / "dinov2").mkdir()
    (tmp_path / "dinov2" / "config.json").write_text('{"model_type": "dinov2", "patch_size": 14}')
    tiny_config["features"].update(backbone=str(tmp_path / "dinov2"), frame_size=[96, 160])
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    assert err.value.problems == ["features.frame_size = [96, 160]: 96, 160 not a multiple of the backbone's patch "
                                  "size 14. Fix: use [98, 154]"]
    tiny_config["features"].update(mode="crop", crop_size=64)
    with pytest.raises(ConfigError, match="features.crop_size = 64: .* Fix: use 56 or 70"):
        validate_config(tiny_config)
    tiny_config["features"]["crop_size"] = 70
    validate_config(tiny_config)


def test_a_folder_without_a_model_config_is_not_a_backbone(tmp_path, tiny_config):
    tiny_config["features"]["backbone"] = str(tmp_path)
    with pytest.raises(ConfigError, match="no config.json in that folder. Fix: give a model folder saved with"):
        validate_config(tiny_config)


# Each shipped config with the layers it is documented to go over.
SHIPPED_CONFIGS = {"config.yaml": [], "benchmarks/relational_benchmark.yaml": [],
                   "benchmarks/synthetic_benchmark.yaml": [],
                   "benchmarks/learning_curve.yaml": ["benchmarks/relational_benchmark.yaml"],
                   "benchmarks/self_training.yaml": ["benchmarks/relational_benchmark.yaml",
                                                     "benchmarks/learning_curve.yaml"]}


@pytest.mark.parametrize("config", sorted(SHIPPED_CONFIGS))
def test_the_shipped_configs_pass_the_checks(config):
    configfiles = [] if config == "config.yaml" else [ROOT / c for c in (*SHIPPED_CONFIGS[config], config)]
    assert load_config(ROOT / "config.yaml", configfiles)["features"]["backbone"] == "embedded"


def test_the_scarce_label_recipe_layers_over_the_learning_curve():
    layers = [ROOT / c for c in SHIPPED_CONFIGS["benchmarks/self_training.yaml"]]
    curve = load_config(ROOT / "config.yaml", layers)
    recipe = load_config(ROOT / "config.yaml", [*layers, ROOT / "benchmarks/self_training.yaml"])
    assert recipe["learning_curve"] == curve["learning_curve"] and recipe["ablations"] == curve["ablations"]
    assert recipe["train"]["self_training"]["weight"] > 0 and recipe["train"]["min_steps"] > curve["train"]["min_steps"]
    assert recipe["train"]["lr"] == curve["train"]["lr"]    # a layer changes only what it names


def test_a_backbone_folder_with_an_unusable_patch_size_is_named(tmp_path, tiny_config):
    (tmp_path / "config.json").write_text('{"model_type": "dinov2", "patch_size": 0}')
    tiny_config["features"]["backbone"] = str(tmp_path)
    with pytest.raises(ConfigError, match="has no usable patch_size .*patch_size is 0"):
        validate_config(tiny_config)


def test_the_hub_probe_goes_through_the_environments_proxy(monkeypatch):
    """Where the hub is reached only through a proxy, the probe asks the proxy, as the hub client would."""
    from svip_core.config import _reachable

    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(4)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        assert not _reachable("https://huggingface.invalid")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert _reachable("https://huggingface.invalid")
    finally:
        proxy.close()


def _silent_endpoint():
    """A hub address that never answers, as behind a firewall that drops packets: a listening socket whose
    backlog is full (Linux then ignores further connection requests)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for s in fillers:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel accepts connections beyond a full backlog: no silent endpoint to test with")
    except OSError:
        pass
    finally:
        probe.close()
    return f"http://127.0.0.1:{port}", [server, *fillers]


@pytest.mark.parametrize("endpoint", ["silent", "unresolvable"])
def test_a_hub_id_offline_fails_at_once_in_one_line(tmp_path, endpoint):
    """Offline is detected, not waited out: the probe gives its verdict within HUB_PROBE_SECONDS whatever the
    endpoint does (a silent hub, a name lookup that fails), and svip and the workflow fail on that verdict, in
    one line, before the hub client sends a request (whose retries would take 10 s and more)."""
    from svip_core.config import HUB_PROBE_SECONDS, _reachable

    sockets = []
    if endpoint == "silent":
        url, sockets = _silent_endpoint()
    else:
        url = "http://huggingface.invalid"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf"))
    config = copy.deepcopy(TINY)
    config["features"]["backbone"] = "facebook/dinov2-base"
    wd = copy_workflow(tmp_path / "wf", config)
    try:
        start = time.monotonic()
        reachable = _reachable(url)
        probe_seconds = time.monotonic() - start
        result = svip_hash(wd, env=env)
        workflow = snakemake(wd, "-n", env=env)
    finally:
        for s in sockets:
            s.close()
    # The probe's own bound (its thread is joined with that timeout), not a race between two commands' times,
    # which a busy machine can lose either way.
    assert not reachable
    assert probe_seconds < HUB_PROBE_SECONDS + 2.0, probe_seconds
    for out in (result, workflow):
        assert_one_line(out, 'features.backbone = "facebook/dinov2-base"', "hf download facebook/dinov2-base")
        # The verdict is the probe's: had a request been sent and failed, the line would say "could not list it".
        assert f"and {url} cannot be reached (offline)" in out.stderr, out.stderr


HUB_REPO = "svip-tests/tiny-dinov2"


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    """The hub serving a tiny random DINOv2 (saved with save_pretrained, patch size 8 as TINY's frames need), with
    a preprocessor config and a file no backbone needs."""
    from svip_core.features.backbone import build_embedded

    repo = build_embedded(TINY["features"]["embedded"], tmp_path_factory.mktemp("hub") / "tiny-dinov2")
    (repo / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.2, 0.2, 0.2]}')
    (repo / "README.md").write_text("a tiny random DINOv2\n")
    with FakeHub({HUB_REPO: repo}) as hub:
        yield hub


def hub_env(hub: FakeHub, hf_home: Path) -> dict:
    """This process's environment with the hub client pointed at ``hub`` and a Hugging Face cache of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "HF_XET_CACHE")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def contents(folder: Path) -> set[str]:
    """The sha256 of every file under ``folder`` (the cache names blobs by etag, so content is what tells)."""
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_planning_a_hub_id_downloads_no_weights_and_its_hash_survives_the_download(tmp_path, fake_hub):
    """`svip hash` and `snakemake -n` read the hub's listing and small configs, never the weights; the extract
    job's download then leaves the planned extract hash as it was, so nothing re-runs for it."""
    config = copy.deepcopy(TINY)
    config["features"]["backbone"] = HUB_REPO
    wd = copy_workflow(tmp_path / "wf", config)
    hf_home = tmp_path / "hf"
    env = hub_env(fake_hub, hf_home)
    weights = {name: hashlib.sha256(data).hexdigest() for name, data in fake_hub.repos[HUB_REPO].items()
               if Path(name).suffix in LFS_SUFFIXES}
    assert weights
    fake_hub.requests.clear()

    planned = svip("hash", "extract", cwd=wd, env=env, timeout=60)
    dry_run = snakemake(wd, "-n", env=env)
    assert planned.returncode == 0 and dry_run.returncode == 0, planned.stderr + dry_run.stderr[-3000:]
    fetched = fake_hub.fetched()
    assert "config.json" in fetched and not set(fetched) & set(weights), fetched
    assert not any(Path(path).suffix in LFS_SUFFIXES for _, path in fake_hub.requests), fake_hub.requests
    assert not contents(hf_home) & set(weights.values())

    fetch = "from svip_core.features.backbone import fetch_backbone; print(fetch_backbone(%r))" % HUB_REPO
    job = subprocess.run([sys.executable, "-c", fetch], cwd=wd, env=env, capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    assert set(weights) <= set(fake_hub.fetched()) and set(weights.values()) <= contents(hf_home)
    assert (Path(job.stdout.strip()) / "preprocessor_config.json").is_file()

    asked = len(fake_hub.requests)
    again = svip("hash", "extract", cwd=wd, env=env, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout == planned.stdout
    assert fake_hub.requests[asked:] == []          # planned from the downloaded files alone, as offline


def test_a_hub_id_the_hub_does_not_have_fails_at_planning_in_one_line(tmp_path, fake_hub):
    config = copy.deepcopy(TINY)
    config["features"]["backbone"] = "svip-tests/no-such-model"
    wd = copy_workflow(tmp_path / "wf", config)
    result = svip_hash(wd, env=hub_env(fake_hub, tmp_path / "hf"))
    assert_one_line(result, 'features.backbone = "svip-tests/no-such-model"', "correct the id")
    assert "the hub has no model svip-tests/no-such-model" in result.stderr


def test_a_leaking_clip_stops_prepare_with_one_line_per_problem(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, {"train": 6, "val": 2, "test": 2}, 6, 4, 48, 80, ["meeting"], seed=1)
    shutil.copy(data / "train" / "synth_train_00000.npz", data / "val" / "copy.npz")
    config = copy.deepcopy(TINY)
    config["data"]["source"] = str(data)
    wd = copy_workflow(tmp_path / "wf", config)
    result = snakemake(wd)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    log = next((wd / "results" / "prepare").glob("*/logs/prepare.log")).read_text()
    assert "Traceback" not in log
    problems = [line for line in log.splitlines() if line.startswith("data.on_duplicate_id")]
    assert len(problems) == 1 and problems[0] in result.stdout + result.stderr      # shown by show-failed-logs
    assert "leak between splits train/val" in problems[0]
    assert "synth_train_00000.npz" in problems[0] and "copy.npz" in problems[0]
    assert problems[0].endswith("or set data.on_duplicate_id: drop")


def test_a_key_named_as_other_tools_name_it_is_pointed_to_ours(tmp_path):
    """Close misses by meaning, where spelling is no help: learning_rate is not close to lr."""
    write_config(tmp_path / "config.yaml", TINY)
    override = {"train": {"learning_rate": 0.001, "num_epochs": 3}, "features": {"image_size": [96, 160]}}
    result = svip_hash(tmp_path, write_config(tmp_path / "mine.yaml", override))
    assert result.returncode == 1 and problem_lines(result.stderr) == [
        "svip hash: features.image_size = [96, 160]: unknown key. Fix: did you mean features.frame_size?",
        "svip hash: train.learning_rate = 0.001: unknown key. Fix: did you mean train.lr?",
        "svip hash: train.num_epochs = 3: unknown key. Fix: did you mean train.epochs?"]


def test_a_missing_data_folder_is_said_alike_by_svip_validate_and_the_workflow(tmp_path):
    missing = tmp_path / "nowhere"
    fix = "folder not found. Fix: give a dataset folder (train/ val/ [test/] [unlabelled/] folders of .npz clips, " \
          "or train.h5 val.h5 [test.h5] [unlabelled.h5])"
    validated = svip("validate", missing)
    assert validated.returncode == 1 and validated.stderr.strip() == f"{missing}: {fix}"
    wd = copy_workflow(tmp_path / "wf", {**TINY, "data": {**TINY["data"], "source": str(missing)}})
    planned = snakemake(wd, "-n")
    assert planned.returncode == 1 and problem_lines(planned.stderr) == [
        f'data.source = "{missing}": {fix} or "synthetic"']


def test_every_command_takes_the_configfile_after_its_name_and_synth_shows_its_settings(tmp_path):
    write_config(tmp_path / "config.yaml", TINY)
    small = write_config(tmp_path / "small.yaml", {"synthetic": {"clips": {"train": 2, "val": 1, "test": 1}}})
    made = svip("synth", tmp_path / "out", "--configfile", small, cwd=tmp_path)
    assert made.returncode == 0 and made.stdout.strip() == f"wrote 4 clips under {tmp_path / 'out'}", made.stderr
    before = svip("--configfile", small, "hash", "prepare", cwd=tmp_path)
    after = svip("hash", "prepare", "--configfile", small, cwd=tmp_path)
    assert after.returncode == 0 and after.stdout == before.stdout != svip("hash", "prepare", cwd=tmp_path).stdout
    shown = svip("synth", "--help", cwd=tmp_path).stdout.splitlines()
    settings = shown[shown.index("settings (config.yaml's synthetic section, or a --configfile layered over it; "
                                 "./config.yaml):") + 1:]
    # TINY's, not defaults
    assert settings[:2] == ["  clips: {train: 12, val: 4, test: 4, unlabelled: 0}", "  frames: 6"]
    assert settings[-1].startswith("  scene: social  (scene family: social")


def test_the_configs_comment_names_both_dataset_layouts():
    line = next(line for line in (ROOT / "config.yaml").read_text().splitlines() if line.strip().startswith("source:"))
    assert "*.npz" in line and "train.h5" in line


def test_the_first_dry_run_on_new_data_says_extract_jobs_come_after_prepare(tmp_path):
    """Prepare decides the shards, so before it ran a dry run cannot list the extract jobs: Snakemake says so,
    in the words the README quotes."""
    from conftest import folder_dataset

    data = folder_dataset(tmp_path / "data", {"train": 4, "val": 2, "test": 2}, seed=5)
    wd = copy_workflow(tmp_path / "wf", {**TINY, "data": {**TINY["data"], "source": str(data)}})
    planned = snakemake(wd, "-n")
    notice = "The run involves checkpoint jobs, which will result in alteration of the DAG"
    assert planned.returncode == 0 and notice in planned.stdout + planned.stderr
    jobs = [line for line in (planned.stdout + planned.stderr).splitlines() if line.startswith("rule extract")]
    assert jobs == []                                   # listed only once prepare has run
    assert notice in " ".join((ROOT / "README.md").read_text().split())
