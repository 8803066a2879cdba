"""Models: loading by alias/folder/hub id, and the shared sampler."""
