"""The README, read as a user would run it: every `python -m train` command of its code blocks and inline code (and
the train arguments of its sbatch and docker commands) composes through the typed config as `--cfg job` would, its
YAML recipes load from `--config-dir`, its accelerate, docker and script commands name what exists, and the two
first commands stay word for word. The commands are read from the README, so the test follows it."""

import re
import shlex
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from domain_embed import overrides
from domain_embed.config import RootConfig
from domain_embed.hydra_setup import register_configs

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FIRST_COMMANDS = [
    "bash scripts/install.sh && HF_HUB_OFFLINE=1 .venv/bin/python -m train +domain=legal "
    "data.path=../shared/data/legal/obliqa budget=smoke",
    "bash .ci/run",
]
# placeholders the README writes in angle brackets, and a value each takes here
PLACEHOLDERS = {"<domain>": "legal", "<model>": "text-embedding-3-large", "<usd per 1M tokens>": "0.13",
                "<usd>": "0.13"}


def _code_blocks(lang: str) -> list[str]:
    blocks = re.findall(rf"^ *```{lang}\n(.*?)^ *```", README, flags=re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(block) for block in blocks]


def _shell_commands() -> list[str]:
    """Each command of the bash blocks (continuation lines joined) and each inline code span that is a command."""
    lines = [line.strip() for block in _code_blocks("bash") for line in block.replace("\\\n", " ").splitlines()]
    inline = re.findall(r"`((?:python|sbatch|accelerate|docker) [^`]+)`", README)
    return [c for c in lines + inline if c and not c.startswith("#")]


def _train_args(command: str) -> list[str] | None:
    """The arguments `python -m train` receives from a README command (directly, through accelerate, srun's sbatch
    template or the image's entrypoint); None when the command does not run the package's CLI."""
    tokens = shlex.split(command.split("&&")[-1], comments=True)
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and tokens[i + 1] == "train":
            return tokens[i + 2:]
        if token.endswith("slurm_train.sbatch"):
            return tokens[i + 1:]
    if tokens[:2] == ["docker", "run"] and "--entrypoint" not in tokens:
        return tokens[tokens.index("domain-embed:cuda") + 1:]
    if tokens and tokens[-1].endswith("slurm_train.sbatch"):
        return []
    return None


def _train_commands() -> list[list[str]]:
    found = [args for c in _shell_commands() if (args := _train_args(c)) is not None]
    assert len(found) >= 15, found  # the README's journeys, not a parser that lost them
    return found


def _write_yaml_recipes(root: Path) -> None:
    """The README's YAML blocks, each where its `# my_conf/<group>/<name>.yaml` comment puts it."""
    for block in _code_blocks("yaml"):
        (path,) = re.findall(r"^# (my_conf/\S+\.yaml)$", block, flags=re.MULTILINE)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(block)


def _compose(args: list[str], tmp_path: Path):
    """What `python -m train ARGS --cfg job --resolve` checks: the override check, Hydra's composition (the first job
    of a sweep), and the resolved typed config, run directory included."""
    args = [PLACEHOLDERS.get(a, a) for a in args]
    for key, value in PLACEHOLDERS.items():
        args = [a.replace(key, value) for a in args]
    multirun = "-m" in args
    args = [a for a in args if a not in ("-m", "--cfg", "job", "--resolve", "--help")]
    if "--config-dir" in args:
        i = args.index("--config-dir")
        args[i: i + 2] = [f"hydra.searchpath=[file://{tmp_path / args[i + 1]}]"]
    assert overrides.check(args) is None, overrides.check(args)
    if multirun:
        parsed = OverridesParser.create().parse_overrides(args)
        args = BasicSweeper.split_arguments(parsed, None)[0][0]
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        cfg = compose("config", overrides=args, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, OmegaConf.to_object(cfg)


def test_the_first_two_commands_stay_word_for_word():
    blocks = [block.strip() for block in _code_blocks("bash")]
    assert blocks[:2] == FIRST_COMMANDS


def test_the_readme_stays_short_and_keeps_measured_tables_in_docs():
    assert len(README.splitlines()) < 350
    for figure in ("0.6430", "0.7018", "12.94 s", "523.4 s"):  # the measured results and encode benchmark
        assert figure not in README, figure


def test_every_train_command_composes(tmp_path):
    _write_yaml_recipes(tmp_path)
    for args in _train_commands():
        _, root = _compose(args, tmp_path)
        assert isinstance(root, RootConfig) and root.run_dir, args


def test_the_yaml_recipes_load_from_the_config_dir(tmp_path):
    _write_yaml_recipes(tmp_path)
    with_dir = [a for a in _train_commands() if "--config-dir" in a]
    loaded = {}
    for args in with_dir:
        _, root = _compose(args, tmp_path)
        loaded[root.model.name] = root.model
        loaded[root.data.name] = root.data
    model = next(v for k, v in loaded.items() if k.startswith("legal-e5"))
    assert model.query_prompt == "query: " and model.document_prompt == "passage: " and model.pooling == "mean"
    assert loaded["contracts"].path == "/data/contracts-beir"  # the domain file's `# @package _global_` took effect


def test_inline_overrides_with_placeholders_compose(tmp_path):
    spans = [s for s in re.findall(r"`(\+{0,2}[\w.-]+\.<[^`>]+>=[^`]*)`", README)]
    assert spans, "the README's override patterns"
    for span in spans:
        _compose(["+domain=legal", span], tmp_path)


def test_accelerate_commands_parse_and_name_shipped_configs():
    from accelerate.commands.launch import launch_command_parser

    commands = [shlex.split(c) for c in _shell_commands() if "accelerate" in c and "launch -" in c]
    assert len(commands) >= 3
    for tokens in commands:
        launch = tokens[tokens.index("launch") + 1:]
        parsed = launch_command_parser().parse_args(launch)
        assert parsed.module and parsed.training_script == "train", tokens
        assert (REPO / parsed.config_file).is_file(), parsed.config_file  # in the image: /workspace/conf -> /src/conf


def test_docker_commands_mount_the_images_volumes_and_write_as_its_user():
    dockerfile = (REPO / "Dockerfile.cuda").read_text()
    volumes = set(re.findall(r'"(/[^"]+)"', re.search(r"^VOLUME \[(.*)\]$", dockerfile, flags=re.M).group(1)))
    runs = [shlex.split(c) for c in _shell_commands() if c.startswith(("docker run", "mkdir -p hf"))]
    assert len(runs) >= 3
    for tokens in runs:
        tokens = tokens[tokens.index("docker"):]
        mounts = dict(tokens[i + 1].rsplit(":", 1)[::-1] for i, t in enumerate(tokens) if t == "-v")
        assert set(mounts) <= volumes, set(mounts) - volumes
        if "--user" in tokens:  # any uid: every place the run writes must be a folder of the user's own
            assert set(mounts) == volumes and all(host.startswith("$PWD/") for host in mounts.values())
        else:  # uid 10001: named volumes take the image's owner
            assert all("/" not in host for host in mounts.values()), mounts


def test_scripts_and_their_options_exist():
    for command in _shell_commands():
        for script in re.findall(r"\b(scripts/[\w.]+)", command):
            assert (REPO / script).is_file(), script
            if script.endswith(".py"):
                text = (REPO / script).read_text()
                for option in re.findall(r"(?<=\s)(--[\w-]+)", command):
                    assert f'"{option}"' in text, (script, option)


def test_links_into_the_repository_and_headings_resolve():
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
             for h in re.findall(r"^#+ (.*)$", README, flags=re.MULTILINE)}
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        path, _, anchor = target.partition("#")
        if path.startswith("http"):
            continue
        if path:
            assert (REPO / path).exists(), target
        elif anchor:
            assert anchor in slugs, target


@pytest.mark.parametrize("doc", ["docs/offline-bundle.md", "docs/gpu-check.md"])
def test_moved_sections_give_the_bundle_folder_to_the_gpu_check(doc):
    text = (REPO / doc).read_text()
    assert re.findall(r"gpu_check\.sh --bundle (\S+)", text) and "--bundle`" not in text
