from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config


def test_repository_pipeline_yaml_is_valid_and_has_the_seed_threshold():
    config = load_config()
    assert config.parameters.min_relative_improvement == pytest.approx(0.03)
    assert config.parameters.approval_status == "Approved"


def test_overrides_take_the_parameter_type():
    config = load_config().with_overrides(["window_days=14", "use_attributed_clicks=true", "holdout_fraction=0.25"])
    assert config.parameters.window_days == 14
    assert config.parameters.use_attributed_clicks is True
    assert config.parameters.holdout_fraction == 0.25


@pytest.mark.parametrize(
    "override, message",
    [
        ("window_days", "NAME=VALUE"),
        ("no_such=1", "unknown parameter"),
        ("window_days=-3", "window_days"),
        ("holdout_fraction=1.5", "holdout_fraction"),
        ("use_attributed_clicks=maybe", "true or false"),
        ("window_end=last tuesday", "ISO date-time"),
        ("approval_status=Yes", "approval_status"),
        ("seed=-1", "seed=-1: Input should be greater than or equal to 0"),
        ("seed=4294967296", "seed=4294967296: Input should be less than or equal to 2147483647"),
        ("window_end=9999-12-31T00:00:00Z", "window_end=9999-12-31T00:00:00Z: .* outside the dates feedback can have; "
                                            "give one from 2000-01-01 to before 2100-01-01"),
        ("window_end=1970-01-01T00:00:00Z", "outside the dates"),
        ("min_relative_improvement=50", "min_relative_improvement"),
        ("prepare_engine=flink", "prepare_engine"),
    ],
)
def test_bad_overrides_name_the_parameter(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config().with_overrides([override])


def test_store_choice_order(monkeypatch, tmp_path):
    monkeypatch.delenv("APPSIM_STORE", raising=False)
    assert load_config().store.endswith("appsim-store")
    monkeypatch.setenv("APPSIM_STORE", str(tmp_path / "env"))
    assert load_config().store == f"file://{tmp_path / 'env'}"
    assert load_config(store=str(tmp_path / "flag")).store == f"file://{tmp_path / 'flag'}"
    assert load_config(store=str(tmp_path / "flag")).registry_uri == f"sqlite://{tmp_path / 'flag' / 'registry.db'}"


def test_unknown_keys_and_bad_yaml_are_reported(tmp_path: Path):
    bad = tmp_path / "p.yaml"
    bad.write_text("parameters:\n  windw_days: 3\n")
    with pytest.raises(ConfigError, match="windw_days"):
        load_config(bad)
    bad.write_text("parameters: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_s3_store_needs_an_explicit_registry():
    config = load_config(store="s3://bucket/prefix")
    with pytest.raises(ConfigError, match="sagemaker://"):
        _ = config.registry_uri


def test_prepare_engine_resources_are_configured_and_checked(tmp_path: Path):
    assert load_config().prepare.memory_limit == "2GB"
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("prepare:\n  memory_limit: lots\n")
    with pytest.raises(ConfigError, match="prepare.memory_limit"):
        load_config(bad)


def test_which_pipeline_yaml_is_read(monkeypatch, tmp_path: Path):
    from pipelines import config as module

    monkeypatch.delenv(module.CONFIG_ENV, raising=False)
    assert module.config_source().origin == "repository"  # the tests run from a checkout
    assert module.config_source().path == module.REPOSITORY_CONFIG
    mine = tmp_path / "mine.yaml"
    mine.write_text("pipeline_name: from-env\n")
    monkeypatch.setenv(module.CONFIG_ENV, str(mine))
    assert load_config().pipeline_name == "from-env"
    other = tmp_path / "other.yaml"
    other.write_text("pipeline_name: from-flag\n")
    assert load_config(other).pipeline_name == "from-flag"  # --config wins over $APPSIM_CONFIG
    monkeypatch.setenv(module.CONFIG_ENV, str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match=r"gone.yaml \(from \$APPSIM_CONFIG\) does not exist"):
        load_config()
    monkeypatch.delenv(module.CONFIG_ENV)
    monkeypatch.setattr(module, "REPOSITORY_CONFIG", tmp_path / "no-checkout" / "pipeline.yaml")
    assert module.config_source().origin == "package"  # an installed package reads its own copy
