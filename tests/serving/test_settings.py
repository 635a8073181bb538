import pytest

from serving.settings import ServingSettings, SettingsError, parse_api_keys, settings_from_env


def test_settings_from_environment(tmp_path):
    settings = settings_from_env({
        "APPSIM_STORE": str(tmp_path), "APPSIM_CHALLENGER_VERSION": "3", "APPSIM_CHALLENGER_WEIGHT": "0.25",
        "APPSIM_API_KEYS": "acme:k1, globex:k2", "APPSIM_RATE_LIMIT": "50",
    })
    assert not settings.endpoint_mode
    assert settings.registry_uri() == f"sqlite://{tmp_path}/registry.db"
    assert settings.resolved_feedback_uri() == f"file://{tmp_path}/feedback"
    assert (settings.challenger_version, settings.challenger_weight) == (3, 0.25)
    assert settings.api_keys == {"k1": "acme", "k2": "globex"}
    assert settings.rate_per_second == 50
    # The CLI hands settings to workers as JSON; they come back identical.
    assert settings_from_env({"APPSIM_SERVING_SETTINGS": settings.to_env()}) == settings


def test_endpoint_mode_from_sagemaker_model_dir(tmp_path):
    settings = settings_from_env({"SM_MODEL_DIR": str(tmp_path), "APPSIM_MODEL_VERSION": "7"})
    assert settings.endpoint_mode and settings.model_version == 7
    assert settings.resolved_feedback_uri() is None


@pytest.mark.parametrize("env", [{"APPSIM_CHALLENGER_WEIGHT": "1.5"}, {"APPSIM_API_KEYS": "no-colon"}])
def test_bad_settings_name_the_problem(env):
    with pytest.raises(SettingsError):
        settings_from_env(env)


def test_no_model_source_is_explained():
    with pytest.raises(SettingsError, match="APPSIM_MODEL_DIR"):
        ServingSettings(store="s3://bucket/store").registry_uri()


def test_parse_api_keys_keeps_colons_in_keys():
    assert parse_api_keys("acme:a:b") == {"a:b": "acme"}


def test_the_caller_supplies_store_defaults_only_when_no_artifact_folder_is_served(monkeypatch, tmp_path):
    from serving.server import build_settings

    for name in ("APPSIM_STORE", "APPSIM_REGISTRY", "APPSIM_MODEL_DIR", "SM_MODEL_DIR", "APPSIM_SERVING_SETTINGS"):
        monkeypatch.delenv(name, raising=False)
    asked = []

    def defaults(store):
        asked.append(store)
        return {"store": str(tmp_path), "registry": f"sqlite://{tmp_path}/registry.db"}

    settings = build_settings({"store": "given", "poll_seconds": 5.0}, defaults)
    assert asked == ["given"] and settings.store == str(tmp_path) and settings.poll_seconds == 5.0
    assert settings.registry_uri() == f"sqlite://{tmp_path}/registry.db"
    served = build_settings({"model_dir": str(tmp_path)}, defaults)
    assert served.endpoint_mode and asked == ["given"]
    with pytest.raises(SettingsError, match="challenger_weight"):
        build_settings({"model_dir": str(tmp_path), "challenger_weight": 2.0}, defaults)
