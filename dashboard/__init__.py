"""The live fleet dashboard (`python -m dashboard`, `edgefleet dashboard`): Bokeh, fed from the local IoT Hub."""
