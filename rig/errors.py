"""Errors a user can fix. The CLI prints their message on one line, without a traceback."""
from stimuli.base import StimulusError  # noqa: F401  (a ValueError: `stimuli` does not depend on `rig`)


class RigError(Exception):
    """A mistake in the input (protocol, arguments, files) or the environment, with what to do about it."""


class ProtocolError(RigError):
    """A protocol file that does not validate; the message names the file, line and key path."""


class SubjectError(RigError):
    """A subject (network) that cannot be built or loaded, e.g. weights missing offline."""


class SiteError(RigError):
    """A site pattern that matches nothing, or a site whose output cannot be recorded."""


#: every exception type whose message is meant for the user as it is
USER_ERRORS: tuple[type[Exception], ...] = (RigError, StimulusError)
