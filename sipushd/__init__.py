"""sipushd: a SIP registrar and stateful proxy that wakes sleeping softphones with push."""

__version__ = "0.1.0"
