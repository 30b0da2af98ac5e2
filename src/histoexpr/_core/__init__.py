"""The package's internals, which every room may use (never the reverse).

Image access and geometry, element builders, writer records and key checks, files replaced safely,
logging and progress, validation, memory estimates, devices, seeds, statistics.
"""
