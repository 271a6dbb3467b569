"""Ray Serve glue around the Ray-free core in :mod:`app`."""
