from setuptools import setup

# Metadata lives in setup.cfg.  The twistd dropin directory twisted/plugins has
# no __init__.py (Twisted owns that namespace), so it is listed there by hand.
setup()
