"""Checks run inside a freshly built image (fed on stdin: `docker run -i --entrypoint python IMG - ARGS`).

  --forbid a,b     fail when any of these modules is importable (the edge images carry no Spark/MLflow/pandas)
  --import a,b     fail unless these modules import (catches a missing shared library, e.g. for onnxruntime)
  --bundle DIR     verify the baked-in bundle (sha256 of every file); predict a row with the fleet model and
                   one device model per family through ONNX Runtime and joblib (they must agree); warn when
                   the image's libraries differ from the ones the bundle was trained with
Prints one line per check; exit 1 when a check fails. Uses only what the image has.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forbid", default="")
    parser.add_argument("--import", dest="imports", default="")
    parser.add_argument("--bundle")
    args = parser.parse_args()
    failed = False

    present = [m for m in filter(None, args.forbid.split(",")) if importlib.util.find_spec(m)]
    print(f"forbidden modules present: {present}")
    failed |= bool(present)

    for module in filter(None, args.imports.split(",")):
        try:
            importlib.import_module(module)
        except Exception as err:  # report every kind of import failure the same way
            print(f"FAIL import {module}: {type(err).__name__}: {err}")
            failed = True
    if args.imports:
        print(f"imports: {args.imports} {'FAILED' if failed else 'ok'}")

    if args.bundle:
        from edgefleet.bundle import BundleReader, verify_bundle

        problems = verify_bundle(Path(args.bundle))
        if problems:
            print("FAIL bundle: " + "; ".join(map(str, problems)))
            return 1
        auto, joblib = BundleReader(Path(args.bundle)), BundleReader(Path(args.bundle), runtime="joblib")
        manifest, row = auto.manifest, auto.fill_values.reshape(1, -1)
        print(f"bundle {manifest.bundle_version}: {len(manifest.devices)} devices, every file verified")
        # The fleet model and one device of each model family, through ONNX Runtime and through
        # joblib (scikit-learn unpickling): both must load here and agree (ONNX computes in float32).
        samples = {"fleet": "image-check-unknown-device"}
        for device_id, entry in sorted(manifest.devices.items()):
            if entry.status == "trained" and entry.family:
                samples.setdefault(entry.family, device_id)
        for family, device_id in samples.items():
            (a,), route = auto.predict(device_id, row)
            (b,), _ = joblib.predict(device_id, row)
            agree = abs(a - b) <= 1e-3 * max(1.0, abs(b))
            print(f"  {family:<18} {route.kind:<6} onnx/auto {a:.6g}  joblib {b:.6g}  {'ok' if agree else 'DIFFER'}")
            failed |= not agree
        python = "{}.{}.{}".format(*sys.version_info[:3])
        for lib, trained in sorted(manifest.libraries.items()):
            try:
                here = python if lib == "python" else metadata.version(lib)
            except metadata.PackageNotFoundError:
                continue  # onnx/skl2onnx: training-only
            same = here.split(".")[:2] == trained.split(".")[:2] if lib == "python" else here == trained
            if not same:
                print(f"WARNING: the bundle was trained with {lib} {trained}, the image has {here}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
