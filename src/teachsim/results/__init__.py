"""Results: the run directory (store), the driver that fills it, the reader, summaries
and the report. ``teachsim.run`` and ``teachsim.open_run`` are the entry points."""
