"""Test doubles shipped with the package, so tests, benchmarks and users share one: the stand-in
inference server (:mod:`trace_agents.testing.standin_server`). Nothing in the library imports them.
"""
