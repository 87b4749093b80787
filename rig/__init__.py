"""rig: a virtual electrophysiology rig for vision networks.

    session = rig.run("protocols/quickstart.toml")        # design -> record -> analyse -> perturb
    session = rig.open_session("sessions/2026...")         # browse: .status .protocol .stimuli .recording .results
"""
from .errors import ProtocolError, RigError, SiteError, SubjectError
from .protocol import Protocol, load_protocol
from .session import Session, open_session, resume, run

__all__ = ["Protocol", "ProtocolError", "RigError", "Session", "SiteError", "SubjectError", "load_protocol",
           "open_session", "resume", "run"]
