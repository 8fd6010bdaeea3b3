"""The stand-in's settings: flags and `EDGEHUB_*` variables become one validated object."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.errors import StartError
from edgefleet.process import load_settings
from edgehub.settings import EdgeHubSettings, parse_flags

pytestmark = pytest.mark.fast

TEMPLATE = Path(__file__).resolve().parents[2] / "deployment" / "deployment.template.json"


def test_flags_give_placeholders_module_addresses_and_the_hub_as_the_compose_file_writes_them(
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("hub-s3cret\n")
    password_file.chmod(0o600)
    flags = parse_flags(
        [
            "--deployment", str(TEMPLATE), "--var", "BUNDLE_VERSION=b7",
            "--module-host", "sensor=172.28.1.2", "--module-host", "inference=172.28.2.2",
            "--upstream-mqtt", "sink:1883", "--upstream-username", "edgefleet-edgehub",
            "--upstream-password-file", str(password_file), "--state-dir", "relative/state",
        ]
    )  # fmt: skip

    settings = load_settings(EdgeHubSettings, **flags)

    assert settings.variables == {"BUNDLE_VERSION": "b7"}
    assert settings.module_hosts == {"sensor": "172.28.1.2", "inference": "172.28.2.2"}
    assert settings.upstream_mqtt == ("sink", 1883)
    assert settings.upstream_username == "edgefleet-edgehub"
    assert settings.upstream_password_file is not None
    assert settings.upstream_password_file.password.get_secret_value() == "hub-s3cret"
    assert "hub-s3cret" not in repr(settings) and "hub-s3cret" not in settings.model_dump_json()
    assert settings.state_dir.is_absolute()  # env files name the CA certificate from any directory


def test_flags_left_out_fall_back_to_edgehub_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEHUB_EDGE_DEVICE", "edge-7")
    monkeypatch.setenv("EDGEHUB_MODULE_HOSTS", '{"sensor": "172.28.1.2"}')

    settings = load_settings(EdgeHubSettings, **parse_flags(["--deployment", str(TEMPLATE)]))

    assert settings.edge_device == "edge-7"
    assert settings.module_hosts == {"sensor": "172.28.1.2"}
    assert settings.variables is None  # placeholders stay as written, as the template needs


def test_every_mistake_is_reported_at_once_under_its_variable_name() -> None:
    with pytest.raises(StartError) as caught:
        load_settings(
            EdgeHubSettings,
            deployment=TEMPLATE,
            edge_device="edge 1",
            module_hosts={"sensor": "10.0.0.2", "inference": "10.0.0.2"},
            flush_every_s=0,
        )

    message = str(caught.value)
    assert "EDGEHUB_EDGE_DEVICE: edge device id 'edge 1' must be 1-64 letters" in message
    assert "EDGEHUB_MODULE_HOSTS: each module needs its own address" in message
    assert "EDGEHUB_FLUSH_EVERY_S: Input should be greater than 0" in message


def test_the_ca_export_folder_is_a_flag_and_may_not_be_where_the_keys_are(tmp_path: Path) -> None:
    flags = ["--deployment", str(TEMPLATE), "--state-dir", str(tmp_path / "state")]
    settings = load_settings(EdgeHubSettings, **parse_flags([*flags, "--ca-export-dir", "relative/ca"]))
    assert settings.ca_export_dir is not None and settings.ca_export_dir.is_absolute()

    with pytest.raises(StartError, match="would show the state dir's private keys"):
        load_settings(EdgeHubSettings, **parse_flags([*flags, "--ca-export-dir", str(tmp_path)]))
