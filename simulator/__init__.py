"""The field device simulator: thousands of seeded devices publishing telemetry over MQTT."""
