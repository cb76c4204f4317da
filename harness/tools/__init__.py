"""Scripts run as `python -m bytegolf.tools.NAME`: bench, membench, fuzz, codec and study tables, and the
artifact inspector behind `bytegolf inspect` and `bytegolf decode`."""
