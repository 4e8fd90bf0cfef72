"""Exceptions the core raises; the Processing layer turns them into QgsProcessingException."""


class DespeckNetError(Exception):
    """Bad input or an impossible request. The message says what is wrong and what to do."""


class Cancelled(DespeckNetError):
    """The user cancelled; nothing half-done was left behind."""
