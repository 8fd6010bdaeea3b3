"""The inference module: telemetry in, per-device (or fleet) predictions out."""
