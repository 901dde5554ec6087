"""Pure physics: arrays in, arrays out; no files, no logging configuration, no CLI."""
