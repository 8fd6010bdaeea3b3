"""The field broker: the authenticated TLS MQTT broker field devices publish their readings to.

`python -m field_broker` renders a Mosquitto configuration (TLS listener, password file, ACL from
the identities' roles) from a read-only config directory and runs Mosquitto as its child.
"""
