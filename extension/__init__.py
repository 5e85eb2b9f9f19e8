"""Automatic1111 glue for loraprompt, imported as the package `loraprompt_a1111` (see scripts/)."""
