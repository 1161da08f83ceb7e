"""The one error a manifest raises: its message names the file (and line or key) and what to fix."""


class ManifestError(ValueError):
    pass
