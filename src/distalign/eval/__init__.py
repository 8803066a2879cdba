"""Reward-model and policy evaluation."""
