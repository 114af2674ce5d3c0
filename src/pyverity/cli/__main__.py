from pyverity.cli import entry_point

entry_point()
