"""`kmlx service`: kmlx-gateway and kmlx-worker as launchd or systemd services.

``render.py`` turns a ``ServiceConfig`` into plists, units and env files
(pure functions; the checked-in examples in deploy/ are its output);
``cli.py`` is the typer app that looks things up on this machine and runs
launchctl/systemctl (``--dry-run`` prints instead).
"""
