"""The offline edgeHub stand-in: Mosquitto per module, a router for routes, twins and methods, a lake sink.

Import the parts from their modules (`edgefleet.edgehub.standin`, `.router`, `.sink`, ...):
this package imports nothing eagerly, so `edgefleet.edgehub.topics` stays usable without
paho-mqtt or pandas installed.
"""
