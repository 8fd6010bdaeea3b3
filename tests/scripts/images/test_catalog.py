"""The table of images: every image the checks name exists, and each image gets the checks it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.images.catalog import EDGE_FORBIDDEN, FLAVOURS, IMAGES, image

REPO = Path(__file__).resolve().parents[3]
OUR_PACKAGES = {
    "edgefleet",
    "modules",
    "edgehub",
    "simulator",
    "cloud_training",
    "dashboard",
    "field_broker",
    "edgefleet_cli",
}


def module_file_exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("name", [i.name for i in IMAGES])
def test_every_module_of_ours_an_image_check_imports_exists_in_the_tree(name: str):
    ours = [m for m in image(name).imports if m.split(".")[0] in OUR_PACKAGES]
    assert ours or image(name).training_run, f"{name}: the checks import none of our modules"
    missing = [m for m in ours if not module_file_exists(m)]
    assert not missing, f"{name}: check_image.py would fail to import {missing} (renamed? edit catalog.py)"


def test_long_running_images_are_services_and_jobs_are_not():
    assert {i.name for i in IMAGES if i.service} == {
        "sensor",
        "inference",
        "edgehub",
        "field-broker",
        "sink",
        "dashboard",
    }
    assert {i.name for i in IMAGES if not i.service} == {"simulator", "training"}


def test_edge_images_forbid_spark_mlflow_and_pandas():
    for name in ("sensor", "inference", "edgehub"):
        assert set(EDGE_FORBIDDEN) <= set(image(name).forbid)
    assert {"pyspark", "mlflow"} <= set(image("sink").forbid)  # the sink writes parquet with pandas


def test_sink_check_arguments_forbid_then_import_then_probe_mosquitto_and_writable_dirs():
    assert image("sink").check_arguments() == (
        "--forbid",
        "pyspark,mlflow",
        "--import",
        "edgehub.sink,pyarrow",
        "--mosquitto",
        "--writable",
        "/lake,/var/lib/edgefleet/sink,/tmp",
    )


def test_training_is_checked_by_a_training_run_not_by_check_image():
    training = image("training")
    assert training.training_run and training.check_arguments() == ()
    assert training.flavour == "java"


def test_inference_alone_bakes_the_bundle_and_verifies_it():
    assert [i.name for i in IMAGES if i.bakes_bundle] == ["inference"]
    assert image("inference").check_arguments()[-2:] == ("--bundle", "/app/bundle")


def test_every_image_builds_on_a_known_flavour_and_sensor_comes_before_inference():
    assert {i.flavour for i in IMAGES} == {f.name for f in FLAVOURS}
    names = [i.name for i in IMAGES]
    assert names.index("sensor") < names.index("inference")


def test_every_image_that_runs_mosquitto_carries_the_journal_plugin_and_checks_it_loads():
    with_mosquitto = {i.name for i in IMAGES if i.flavour == "mosquitto"}

    assert {i.name for i in IMAGES if i.journal} == with_mosquitto == {"edgehub", "field-broker", "sink"}
    for name in with_mosquitto:
        dockerfile = (REPO / image(name).dockerfile).read_text()
        assert "COPY ${NATIVE}/edgefleet_journal.so /opt/venv/lib/edgefleet/edgefleet_journal.so" in dockerfile
        assert "--mosquitto" in image(name).check_arguments()
