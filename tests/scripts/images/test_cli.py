"""The image build's command line: which images, in which lanes, on which base flavours."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from scripts.images.catalog import IMAGES, Image
from scripts.images.cli import parse_arguments, select_images, split_flavours, split_lanes
from scripts.images.common import BuildError, Layout
from scripts.images.settings import Settings


def settings_for(only: str = "", skip: str = "", jobs: int = 2) -> Settings:
    return Settings(
        layout=Layout(Path("/repo")),
        images=select_images(only, skip),
        bundle=Path("/repo/out/demo/bundle"),
        rebuild_base=False,
        jobs=jobs,
        python="python3",
        mirror="http://deb.debian.org/debian",
        security_mirror="http://deb.debian.org/debian-security",
        project="edgefleet",
        version="0.1.0",
        revision="abc",
        bundle_version="",
    )


def names(images: Iterable[Image]) -> list[str]:
    return [i.name for i in images]


def test_only_builds_the_named_images_in_catalog_order():
    assert names(select_images("inference,sensor", "")) == ["sensor", "inference"]


def test_skip_builds_every_image_but_the_named_ones():
    assert names(select_images("", "training,inference")) == [
        "sensor",
        "edgehub",
        "field-broker",
        "sink",
        "simulator",
        "dashboard",
    ]


def test_an_unknown_image_name_is_an_error_listing_the_images():
    with pytest.raises(BuildError, match=r"--skip: unknown image 'sensors'.*sensor inference edgehub"):
        select_images("", "sensors")


def test_only_and_skip_that_leave_nothing_are_an_error():
    with pytest.raises(BuildError, match="leave no image"):
        select_images("sensor", "sensor")


def test_two_jobs_build_training_in_its_own_lane_beside_the_others():
    settings = settings_for()
    lane_a, lane_b = split_lanes(settings)
    assert names(lane_a) == ["training"]
    assert names(lane_b) == [i.name for i in IMAGES if i.name != "training"]
    early, late = split_flavours(settings, lane_a, lane_b)
    assert [f.name for f in early] == ["base"] and [f.name for f in late] == ["mosquitto", "java"]


def test_one_job_builds_everything_in_one_lane_after_every_base_flavour():
    settings = settings_for(jobs=1)
    lane_a, lane_b = split_lanes(settings)
    assert lane_a == [] and names(lane_b) == [i.name for i in IMAGES]
    early, late = split_flavours(settings, lane_a, lane_b)
    assert [f.name for f in early] == ["base", "mosquitto", "java"] and late == []


def test_training_alone_needs_only_the_java_flavour_and_one_lane():
    settings = settings_for(only="training")
    assert [f.name for f in settings.flavours] == ["java"] and settings.extras == ("training",)
    assert split_lanes(settings) == ([], list(settings.images))


def test_command_line_takes_the_flags_of_the_old_script_in_both_spellings():
    args = parse_arguments(["--bundle=out/x", "--only", "sensor", "--skip=training", "--jobs", "1", "--rebuild-base"])
    assert (args.bundle, args.only, args.skip, args.jobs, args.rebuild_base) == ("out/x", "sensor", "training", 1, True)


def test_jobs_other_than_one_or_two_are_refused():
    with pytest.raises(SystemExit):
        parse_arguments(["--jobs", "3"])
