"""Preference data: sources and formats -> normalised pairs -> token ids."""

from distalign.data.formats import PreferenceFormatError
from distalign.data.load import DataSourceError, LoadReport, load_preferences

__all__ = ["DataSourceError", "LoadReport", "PreferenceFormatError", "load_preferences"]
