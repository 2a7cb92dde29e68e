"""Training loops: offline (dataset -> step) and online (prompts -> generate -> judge -> step)."""
