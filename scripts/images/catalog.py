"""The table of images: Dockerfile, wheelhouse extra, base flavour and the checks each must pass.

Everything the build knows about one image is on its row here; the checks (`check_image.py
--import ...`) included, so renaming a module means editing one line.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUILT_BY",
    "EDGE_FORBIDDEN",
    "FLAVOURS",
    "IMAGES",
    "Flavour",
    "Image",
    "flavour",
    "image",
]

# The label every image made here carries: only images with it are ever removed.
BUILT_BY = "scripts/build_images.sh"


@dataclass(frozen=True)
class Flavour:
    """A base image: the debootstrapped rootfs plus Debian packages, imported under one tag."""

    name: str
    image: str
    packages: tuple[str, ...]
    check: str  # run with `sh -ec` in the new image, after the Python check every flavour gets


@dataclass(frozen=True)
class Image:
    """One image and everything its build and checks need."""

    name: str
    dockerfile: str
    extra: str  # the pyproject.toml extra it installs (its wheel directory in the wheelhouse)
    flavour: str
    # The user it runs as: each image its own uid, so no container reads another's state; the
    # sink and training share 10001 because the lake (0700, files 0600) is the sink's and training reads it.
    uid: int
    imports: tuple[str, ...] = ()  # must import in the image
    forbid: tuple[str, ...] = ()  # must not be importable in the image
    probes: tuple[str, ...] = ()  # further check_image.py arguments (--mosquitto, --writable ...)
    service: bool = True  # long-running: a HEALTHCHECK; batch jobs have HEALTHCHECK NONE
    context: tuple[str, ...] = ()  # repository files the Dockerfile copies besides the wheelhouse
    bakes_bundle: bool = False  # the model bundle goes into the image (and its version is a tag)
    training_run: bool = False  # check by a tiny Spark training run in the image
    journal: bool = False  # Mosquitto's journal plugin goes into the image (build arg NATIVE)
    # The package whose entry point the image runs (`python -m <package>`); for the deployment
    # images it is the ENTRYPOINT, for the modules the CMD.
    package: str = ""

    @property
    def deployment_image(self) -> bool:
        """Whether the image is one of deployment/images/ (its package's entry point is its ENTRYPOINT)."""
        return self.dockerfile.startswith("deployment/")

    def check_arguments(self) -> tuple[str, ...]:
        """Return the arguments for check_image.py, or () when it has nothing to check."""
        args: list[str] = []
        if self.forbid:
            args += ["--forbid", ",".join(self.forbid)]
        if self.imports:
            args += ["--import", ",".join(self.imports)]
        return (*args, *self.probes)


# Spark 4 runs on Java 17; it needs no `ps`.
FLAVOURS = (
    Flavour("base", "edgefleet/python-base:bookworm", (), ""),
    Flavour(
        "mosquitto",
        "edgefleet/python-base-mosquitto:bookworm",
        ("mosquitto",),
        "mosquitto -h | grep '^mosquitto version'",
    ),
    Flavour(
        "java", "edgefleet/python-base-java:bookworm", ("openjdk-17-jre-headless",), "java -version 2>&1 | head -n 1"
    ),
)

EDGE_FORBIDDEN = ("pyspark", "mlflow", "pandas")

# In build order: sensor before inference, so inference reuses the layers sensor made.
IMAGES = (
    Image(
        "sensor",
        "modules/sensor/Dockerfile",
        package="modules.sensor",
        extra="edge",
        flavour="base",
        uid=10003,
        imports=("modules.sensor.service",),
        forbid=EDGE_FORBIDDEN,
        probes=("--writable", "/var/lib/edgefleet,/tmp"),
    ),
    Image(
        "inference",
        "modules/inference/Dockerfile",
        package="modules.inference",
        extra="edge",
        flavour="base",
        uid=10004,
        imports=("modules.inference.service", "onnxruntime", "sklearn"),
        forbid=EDGE_FORBIDDEN,
        probes=("--writable", "/var/lib/edgefleet,/tmp", "--bundle", "/app/bundle"),
        bakes_bundle=True,
    ),
    Image(
        "edgehub",
        "deployment/images/edgehub/Dockerfile",
        package="edgehub",
        extra="edgehub",
        flavour="mosquitto",
        journal=True,
        uid=10002,
        imports=("edgehub.standin", "cryptography"),
        forbid=EDGE_FORBIDDEN,
        probes=(
            "--mosquitto",
            "--writable",
            "/var/lib/edgefleet/edgehub,/var/lib/edgefleet-ca,/tmp",
            "--json-file",
            "/etc/edgefleet/deployment.json",
        ),
        context=("deployment/deployment.template.json",),
    ),
    Image(
        "field-broker",
        "deployment/images/field-broker/Dockerfile",
        package="field_broker",
        extra="field-broker",
        flavour="mosquitto",
        journal=True,
        uid=10007,
        imports=("field_broker.broker",),
        forbid=("pyspark", "mlflow", "pandas", "pyarrow", "paho", "cryptography"),
        probes=("--mosquitto", "--writable", "/var/lib/edgefleet/field-broker,/tmp"),
    ),
    Image(
        "sink",
        "deployment/images/sink/Dockerfile",
        package="edgehub.sink_service",
        extra="sink",
        flavour="mosquitto",
        journal=True,
        uid=10001,
        imports=("edgehub.sink", "pyarrow"),
        forbid=("pyspark", "mlflow"),
        probes=("--mosquitto", "--writable", "/lake,/var/lib/edgefleet/sink,/tmp"),
    ),
    Image(
        "simulator",
        "deployment/images/simulator/Dockerfile",
        package="simulator",
        extra="simulator",
        flavour="base",
        uid=10005,
        imports=("simulator.run",),
        forbid=("pyspark", "mlflow", "pandas", "pyarrow"),
        service=False,
    ),
    Image(
        "dashboard",
        "deployment/images/dashboard/Dockerfile",
        package="dashboard",
        extra="dashboard",
        flavour="base",
        uid=10006,
        imports=("dashboard.app", "bokeh"),
        forbid=("pyspark", "mlflow", "pyarrow"),
    ),
    Image(
        "training",
        "deployment/images/training/Dockerfile",
        package="cloud_training",
        extra="training",
        flavour="java",
        uid=10001,
        service=False,
        training_run=True,
    ),
)


def image(name: str) -> Image:
    """Return the image of this name."""
    return next(i for i in IMAGES if i.name == name)


def flavour(name: str) -> Flavour:
    """Return the base flavour of this name."""
    return next(f for f in FLAVOURS if f.name == name)
