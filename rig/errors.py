"""Errors a user can fix. The CLI prints their message on one line, without a traceback."""


class RigError(Exception):
    """A mistake in the input (protocol, arguments, files) or the environment, with what to do about it."""


class ProtocolError(RigError):
    """A protocol file that does not validate; the message names the file, line and key path."""


class SubjectError(RigError):
    """A subject (network) that cannot be built or loaded, e.g. weights missing offline.

    `key` names the `[subject]` setting at fault (`arch`, `weights`, `device`, `factory`), for protocol errors.
    """

    def __init__(self, message: str, key: str = "arch"):
        super().__init__(message)
        self.key = key


class SiteError(RigError):
    """A site pattern that matches nothing, or a site whose output cannot be recorded."""


def is_user_error(error: BaseException) -> bool:
    """True for errors whose message is meant for the user as it is: `RigError`s, `stimuli.StimulusError`,
    `stimuli.UnknownNameError` (a name missing from a registry) and `analyses.AnalysisInputError` (errors of
    packages that do not depend on `rig`)."""
    if isinstance(error, RigError):
        return True
    import sys

    for module, name in (("stimuli.base", "StimulusError"), ("stimuli.registry", "UnknownNameError"),
                         ("analyses.ratemaps", "AnalysisInputError")):
        loaded = sys.modules.get(module)  # a package never imported raised nothing
        if loaded is not None and isinstance(error, getattr(loaded, name)):
            return True
    return False
