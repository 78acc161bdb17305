"""Shared code for *Computer-vision papers, by running them*.

One module per concern; each module's docstring names the chapter that explains it.
The notebooks import this package from the repository root (their first setup cell
puts that root on ``sys.path``); it is deliberately not installed into site-packages,
where the name ``utils`` would collide with other packages.
"""

__all__ = ["anomaly", "cam", "config", "data", "hooks", "metrics", "models", "registry",
           "results", "synthetic", "viz"]
