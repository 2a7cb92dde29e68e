"""The built-in demo: a tiny model, a synthetic task with a known true reward, SFT then DPO, before/after."""
