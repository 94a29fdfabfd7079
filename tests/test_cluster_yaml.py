"""cluster.yaml: valid for Ray's cluster launcher, and safe to launch.

Validity is checked two ways: against the JSON schema Ray ships (ray/autoscaler/ray-schema.json)
directly, and through the launcher's own offline steps of `ray up` (prepare_config, which merges
the AWS defaults, then validate_config). Broken copies must be rejected, to show the check bites.

Safety: the dashboard and Jobs API listen on 127.0.0.1 only, every `ray start` runs with
RAY_AUTH_MODE=token, the token comes from a file outside the repository, no inbound rule opens a
port to the internet, and no credential or token is written in the file.
"""

from __future__ import annotations

import copy
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

import ray
import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# Instance families with NVIDIA GPUs, for a node type that names no GPU resource.
GPU_FAMILIES = ("p3", "p4d", "p4de", "p5", "p5e", "p5en", "p6", "g4dn", "g5", "g6", "g6e", "gr6")


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def _loaded(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


@pytest.fixture
def config(_loaded: dict[str, Any]) -> dict[str, Any]:
    """A fresh copy per test: the launcher's functions change what they get."""
    return copy.deepcopy(_loaded)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    import json

    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture
def launched(config: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` sees it after merging the AWS defaults (what the nodes really run)."""
    return launcher_check(config)


def launcher_check(config: dict[str, Any]) -> dict[str, Any]:
    """The offline part of `ray up` (_bootstrap_config): merge the provider's defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def gpu_types(config: dict[str, Any]) -> list[str]:
    out = []
    for name, t in config["available_node_types"].items():
        gpus = (t.get("resources") or {}).get("GPU", 0)
        family = str(t.get("node_config", {}).get("InstanceType", "")).split(".")[0]
        if gpus >= 1 or family in GPU_FAMILIES:
            out.append(name)
    return out


def start_commands(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bray start\b", c)]


def strings(obj: Any) -> Iterator[str]:
    """Every string key and value in a loaded YAML document."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


# -- schema ---------------------------------------------------------------------------------------


def test_schema_is_the_one_ray_ships(schema: dict[str, Any]) -> None:
    assert SCHEMA_PATH.is_file()
    assert "available_node_types" in schema["properties"]


def test_cluster_yaml_matches_rays_schema(config: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.validate(config, schema)  # the file as written
    launcher_check(config)  # and as `ray up` prepares it


def _drop_node_config(c: dict[str, Any]) -> None:
    del c["available_node_types"][gpu_types(c)[0]]["node_config"]


def _min_workers_x(c: dict[str, Any]) -> None:
    c["available_node_types"][gpu_types(c)[0]]["min_workers"] = "x"


def _fractional_gpu_resource(c: dict[str, Any]) -> None:
    c["available_node_types"][gpu_types(c)[0]]["resources"]["GPU"] = 0.5


def _misspelled_top_level_key(c: dict[str, Any]) -> None:
    c["head_start_commands"] = c.pop("head_start_ray_commands")


def _command_not_a_string(c: dict[str, Any]) -> None:
    c["setup_commands"].append({"pip": "install raylab"})


@pytest.mark.parametrize(
    "break_it",
    [_drop_node_config, _min_workers_x, _fractional_gpu_resource, _misspelled_top_level_key, _command_not_a_string],
)
def test_broken_copies_are_rejected(config: dict[str, Any], schema: dict[str, Any], break_it) -> None:
    break_it(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)
    with pytest.raises(jsonschema.ValidationError):
        launcher_check(config)


# -- dashboard and Jobs API on loopback -----------------------------------------------------------


def test_dashboard_listens_on_loopback_only(config: dict[str, Any], launched: dict[str, Any], text: str) -> None:
    # Check the merged config too: without head_start_ray_commands in the file, Ray's AWS defaults
    # would start the head with --dashboard-host=0.0.0.0.
    for cfg in (config, launched):
        heads = [c for c in start_commands(cfg.get("head_start_ray_commands", [])) if "--head" in c]
        assert heads, "no `ray start --head` in head_start_ray_commands"
        for cmd in heads:
            assert re.search(r"--dashboard-host(=|\s+)127\.0\.0\.1(\s|;|$)", cmd), cmd
    for value in re.findall(r"--dashboard-host(?:=|\s+)(\S+)", text):
        assert value.rstrip(";") == "127.0.0.1", value
    for s in strings(config):
        assert "0.0.0.0" not in s and "::/0" not in s, s


def test_no_inbound_rule_open_to_the_internet_except_ssh(config: dict[str, Any]) -> None:
    # Ray adds SSH (tcp/22) from 0.0.0.0/0 itself; anything listed here comes on top of it.
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        if {"0.0.0.0/0", "::/0"} & set(cidrs):
            assert (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort")) == ("tcp", 22, 22), rule


# -- token authentication -------------------------------------------------------------------------


def test_every_ray_start_runs_with_token_auth(config: dict[str, Any], launched: dict[str, Any], text: str) -> None:
    for cfg in (config, launched):
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            cmds = start_commands(cfg.get(key, []))
            assert cmds, f"no `ray start` in {key}"
            for cmd in cmds:
                # Each command runs in its own shell: the mode must be set in the same one, before `ray start`.
                assert re.search(r"\bRAY_AUTH_MODE=token\b.*\bray start\b", cmd, re.S), cmd
    workers = start_commands(launched["worker_start_ray_commands"])
    assert any(re.search(r"--address[= ]\$RAY_HEAD_IP:6379\b", c) and "--object-manager-port=8076" in c for c in workers)
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*(?!token\b)", text)


def test_token_is_mounted_from_a_file_outside_the_repo(config: dict[str, Any]) -> None:
    mounts = config["file_mounts"]
    assert "~/.ray/auth_token" in mounts, "every node needs the token at Ray's default path"
    local = mounts["~/.ray/auth_token"]
    assert local.startswith(("~", "/")), f"{local!r}: a relative path would be inside the repo"
    resolved = Path(local).expanduser().resolve()
    assert not resolved.is_relative_to(REPO), resolved
    # The repo itself is synced to the nodes: it must not be where the token comes from.
    assert mounts.get("~/raylab") == "."


# -- node types -----------------------------------------------------------------------------------


def test_gpu_worker_group_scales_from_zero(launched: dict[str, Any]) -> None:
    head = launched["head_node_type"]
    gpu = [t for t in gpu_types(launched) if t != head]
    assert gpu, "no GPU worker type"
    for name in gpu:
        t = launched["available_node_types"][name]
        assert t["min_workers"] == 0, name
        assert 1 <= t["max_workers"] <= launched["max_workers"], name
        assert t["resources"].get("GPU") == 1, f"{name}: the engine runs one UAPWorker per GPU, one GPU per worker node"
    assert launched.get("idle_timeout_minutes", 0) > 0


def test_head_takes_no_uap_work(launched: dict[str, Any]) -> None:
    head = launched["available_node_types"][launched["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0


def test_cpu_worker_group_for_decoding(launched: dict[str, Any]) -> None:
    head = launched["head_node_type"]
    cpu = [n for n, t in launched["available_node_types"].items() if n != head and n not in gpu_types(launched)]
    assert cpu
    for name in cpu:
        t = launched["available_node_types"][name]
        assert t["min_workers"] == 0 and t["max_workers"] >= 1 and t["resources"].get("CPU", 0) >= 1


def test_s3_access_through_instance_profiles(launched: dict[str, Any]) -> None:
    for name, t in launched["available_node_types"].items():
        arn = t["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert re.fullmatch(r"arn:aws:iam::(<ACCOUNT_ID>|\d{12}):instance-profile/[\w+=,.@-]+", arn), (name, arn)


# -- software -------------------------------------------------------------------------------------


def _pinned(dep: str) -> str:
    pins = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] if d.startswith(dep + "==")]
    assert len(pins) == 1, dep
    return pins[0]


def test_setup_installs_the_pinned_torch_then_raylab(launched: dict[str, Any]) -> None:
    torch_pin, vision_pin = _pinned("torch"), _pinned("torchvision")
    assert (torch_pin, vision_pin) == ("torch==2.14.1", "torchvision==0.29.1")
    # prepare_config merges setup_commands into both of these: what heads and workers really run.
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = launched[key]
        torch_at = [i for i, c in enumerate(cmds) if "pip install" in c and f'"{torch_pin}"' in c and f'"{vision_pin}"' in c]
        raylab_at = [i for i, c in enumerate(cmds) if re.search(r"pip install -e ~/raylab\b", c)]
        assert torch_at and raylab_at, (key, cmds)
        assert torch_at[0] < raylab_at[0], "torch first, so raylab's install does not pull another torch"
        assert not any("ray-wheels" in c or "ray-3.0.0.dev0" in c for c in cmds), "the AWS defaults' dev wheel crept in"


def test_images_are_pinned_ray_with_python_311(config: dict[str, Any]) -> None:
    docker = config.get("docker")
    if not docker:
        pytest.skip("no docker section")
    images = [v for k, v in docker.items() if k.endswith("image")]
    images += [t["docker"]["worker_image"] for t in config["available_node_types"].values() if "worker_image" in t.get("docker", {})]
    versions = set()
    for image in images:
        m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(cpu|gpu|cu\d+)", image)
        assert m, image
        versions.add(m.group(1))
    assert len(versions) == 1, versions
    # The launcher (`ray up`, `ray dashboard`, `ray job`) runs the Ray installed here; keep the cluster's on the same release line.
    (version,) = versions
    assert version.split(".")[:2] == ray.__version__.split(".")[:2], (version, ray.__version__)


# -- no secrets -----------------------------------------------------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key name": re.compile(r"aws_(secret_access_key|access_key_id|session_token)", re.I),
    "AWS secret access key": re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+=]*[0-9])(?=[A-Za-z0-9/+=]*[A-Z])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
    "hex token (ray get-auth-token makes 64 hex digits)": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    "literal RAY_AUTH_TOKEN": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*(?!\$)\S"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def leaks(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_no_credentials_or_token_in_the_file(text: str) -> None:
    assert leaks(text) == []


@pytest.mark.parametrize(
    "secret",
    [
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "aws_secret_access_key: x",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS's documented example secret key
        secrets.token_hex(32),
        "export RAY_AUTH_TOKEN=s3cr3t; ray start --head",
    ],
)
def test_the_secret_check_bites(text: str, secret: str) -> None:
    assert leaks(text + f"\n# {secret}\n")
