"""The gold-judge benchmark: prompts, SFT replies, a known judge, labelled pairs."""
