"""REINFORCE / RLOO alignment of a policy against any reward."""
