"""The sensor module: field MQTT readings in, validated and batched telemetry out to edgeHub."""
