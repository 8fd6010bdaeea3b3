"""`edgefleet dashboard`: a live Bokeh view of the fleet, fed from the local IoT Hub's upstream stream."""
