from pathlib import Path

import pytest

from scmpr_ros.config import ConfigError, ScmprConfig, config_from_dict, load_config


def test_repo_config_files_load(repo_root: Path) -> None:
    files = sorted((repo_root / "config").glob("*.yaml"))
    assert files, "config/ must hold at least one YAML file"
    for path in files:
        if path.name.endswith(".params.yaml"):  # ROS params files have their own shape
            continue
        cfg = load_config(path)
        assert isinstance(cfg, ScmprConfig)


def test_values_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("retrieval:\n  alpha: 2\n  top_k: 3\nmodel:\n  lidar_dims: [8, 16]\n")
    cfg = load_config(path)
    assert cfg.retrieval.alpha == 2.0 and isinstance(cfg.retrieval.alpha, float)
    assert cfg.retrieval.top_k == 3
    assert cfg.model.lidar_dims == [8, 16]
    assert cfg.map == ScmprConfig().map  # untouched sections keep defaults


def test_later_files_override_earlier(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("retrieval:\n  beta: 0.5\n  top_k: 4\n")
    b.write_text("retrieval:\n  beta: 0.7\n")
    cfg = load_config(a, b)
    assert cfg.retrieval.beta == 0.7 and cfg.retrieval.top_k == 4


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("retrieval:\n  alpah: 1.0\n", "unknown key 'alpah'"),
        ("retreival:\n  alpha: 1.0\n", "unknown section 'retreival'"),
        ("retrieval:\n  top_k: ten\n", "retrieval.top_k: expected an integer"),
        ("retrieval:\n  top_k: 2.5\n", "retrieval.top_k: expected an integer"),
        ("model:\n  use_csa: 'yes'\n", "model.use_csa: expected true or false"),
        ("model:\n  lidar_dims: 8\n", "model.lidar_dims: expected a list"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("retrieval: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_keys_are_refused_with_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_bool_is_not_an_int() -> None:
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict({"retrieval": {"top_k": True}})


def test_site_file_holds_overrides_only(repo_root):
    """config/scmpr.yaml may only change defaults: a value equal to its default would be a second source."""
    import yaml

    from scmpr_ros.config import ScmprConfig

    data = yaml.safe_load((repo_root / "config" / "scmpr.yaml").read_text()) or {}
    defaults = ScmprConfig()
    repeated = [
        f"{section}.{key}"
        for section, values in data.items()
        for key, value in (values or {}).items()
        if getattr(getattr(defaults, section), key) == value
    ]
    assert not repeated, f"config/scmpr.yaml repeats defaults: {repeated}"


def test_overrides_dotted_and_nested_and_limits(tmp_path):
    from scmpr_ros.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("retrieval:\n  top_k: 3\n")
    cfg = load_config(path, overrides={"retrieval.beta": 0.25, "nodes": {"threads": 1}}, site=False)
    assert (cfg.retrieval.top_k, cfg.retrieval.beta, cfg.nodes.threads) == (3, 0.25, 1)
    with pytest.raises(ConfigError, match=r"retrieval\.top_k: 0 must be >= 1"):
        load_config(overrides={"retrieval.top_k": 0}, site=False)
    with pytest.raises(ConfigError, match="'gpu' is not one of auto, cpu, cuda"):
        load_config(overrides={"nodes.device": "gpu"}, site=False)
    with pytest.raises(ConfigError, match="expected section.key"):
        load_config(overrides={"retrieval.": 1}, site=False)
