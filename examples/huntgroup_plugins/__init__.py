"""Example sipshield plugin package: name it in ``[server] plugins``."""
