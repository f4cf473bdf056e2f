"""BFCL v4 multi-turn function calling as `trace/BFCL-v0` (see :mod:`trace_envs.bfcl.env`).

Importing this package costs nothing: ``bfcl_eval`` is imported only when an env is built.
"""
