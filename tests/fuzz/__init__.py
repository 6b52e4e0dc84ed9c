"""The fuzz suite's parts: real seed bodies (``corpus``) and structure-aware mutations (``mutate``)."""
