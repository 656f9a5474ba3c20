"""What runs a local stack: the demo agent (``demo``) and the worker and beat
processes the demo and the tests start and stop (``processes``)."""
