"""Run the image build: `python3 -m scripts.images --help` from the repository root."""

import sys

if sys.version_info < (3, 11):  # noqa: UP036  (the system python3 may be older than the project's)
    sys.exit(f"build_images: Python >= 3.11 is needed (tomllib), this is {sys.version.split()[0]}")

from scripts.images.cli import main  # after the version check: it needs 3.11

sys.exit(main())
