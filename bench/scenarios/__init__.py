"""One module per scenario; each has ``run(bench)`` adding CaseResults to ``bench``."""
