"""edgefleet: one ML model per IoT device, from Spark training to the IoT Edge."""

__version__ = "0.1.0"
