"""The offline edgeHub stand-in: Mosquitto per module, a router for routes, twins and methods, a lake sink.

Processes: `python -m edgehub` (the stand-in) and `python -m edgehub.sink_service` (the local
IoT Hub). Import the parts from their modules (`edgehub.standin`, `.router`, `.sink`, ...):
this package imports nothing eagerly, so the sink image runs without the stand-in's
cryptography and the stand-in's without pandas.
"""
