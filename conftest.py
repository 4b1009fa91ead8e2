"""The suite's pytest plugin (options, session fixture, report): benchmarks/plugin.py."""

pytest_plugins = ["benchmarks.plugin"]
