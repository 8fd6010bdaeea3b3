"""edgefleet: one ML model per IoT device, from Spark training to the IoT Edge."""

import os

__version__ = "0.1.0"

# ONNX Runtime (>= 1.29 on Linux) sends usage telemetry to Microsoft and keeps a device id under
# $HOME unless this is set before it loads; nothing of ours should phone home. Set here, the first
# import of every process that predicts (modules, training, Spark workers), unless the user chose.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
