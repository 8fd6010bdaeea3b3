"""The IoT Edge modules: `modules.sensor` (field MQTT → edgeHub) and `modules.inference` (per-device models)."""
