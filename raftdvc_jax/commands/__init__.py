"""The command-line entry points (raftdvc-infer, raftdvc-train, ...): absl flags plus dispatch to the library.

Each module defines its flags at import, so import only the one being run.
"""
