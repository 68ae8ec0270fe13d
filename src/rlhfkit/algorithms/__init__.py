"""The three stages as trainers: thin, numbered steps over `rlhfkit.core`, run by `rlhfkit.runtime.loop`."""
